//! `lease_lock`: the distributed-lock approach. Take a lease item with a conditional put and a
//! 5 s expiry (what `SET key NX EX 5` does in Redis), read and write the stock under it, write
//! the order, release the lease; all inside the API call. Waiting buyers poll the lease with a
//! read and try the conditional put only when it looks free or expired (test-and-test-and-set):
//! polling with the put itself would spend the lease item's write budget on failed writes and
//! starve the holder's release.

use crate::hot::{self, classify, n, s, Call, Hot, HotDesign, Setup};
use crate::sale::{backoff, Answer, Decision, Design, DesignReport, Details, Run};
use aws_sdk_dynamodb::config::retry::RetryConfig;
use flash_domain::clock::now_ms;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The lease's expiry, as `EX 5`.
const LEASE_MS: i64 = 5_000;
/// How long a buyer waits for the lease before the API call gives up: the functions' timeout
/// in template.yaml (Globals.Function.Timeout).
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Poll interval while the lease is taken: 5 ms doubling to 100 ms, jittered ±50 %. Polls are
/// reads, but they still load the one emulator every design shares.
const POLL_BASE: Duration = Duration::from_millis(5);
const POLL_CAP_MS: u64 = 100;
/// Release attempts (2 ms doubling to 50 ms apart: about 5 s, the lease's own expiry).
const RELEASE_ATTEMPTS: u32 = 100;

pub struct LeaseLock {
    hot: Hot,
    /// For the lease's own writes: no SDK retries, whose backoff (up to seconds when
    /// throttled) would hold the lease while every other buyer waits; the lock loops retry
    /// with short pauses instead.
    lease_client: aws_sdk_dynamodb::Client,
    /// Write requests that reached the lease item: acquisitions, failed polls, releases.
    lease_writes: AtomicU64,
    /// Releases that failed even after retries: the next buyer waits for the expiry.
    releases_lost: AtomicU64,
}

impl LeaseLock {
    /// Whether the lease is free or expired, by a consistent read.
    async fn looks_free(&self) -> bool {
        let out = self
            .hot
            .client
            .get_item()
            .table_name(&self.hot.table)
            .set_key(Some(self.hot.key("LEASE")))
            .consistent_read(true)
            .send()
            .await;
        match out {
            Ok(out) => out
                .item
                .is_none_or(|item| hot::number(&item, "expires_at") < now_ms()),
            Err(_) => false,
        }
    }

    async fn acquire(&self, owner: &str) -> Result<bool, String> {
        let mut item = self.hot.key("LEASE");
        let now = now_ms();
        item.insert("owner".into(), s(owner));
        item.insert("expires_at".into(), n(now + LEASE_MS));
        let out = self
            .lease_client
            .put_item()
            .table_name(&self.hot.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        match classify(out) {
            Call::Done(_) => {
                self.lease_writes.fetch_add(1, Relaxed);
                Ok(true)
            }
            Call::Condition => {
                self.lease_writes.fetch_add(1, Relaxed);
                Ok(false)
            }
            Call::Unavailable(code) => Err(code),
        }
    }

    /// Deletes the lease if it is still ours, retried at once and often, since every waiter is
    /// blocked on it. A release that never lands leaves the lease to expire.
    async fn release(&self, owner: &str) {
        for attempt in 0..RELEASE_ATTEMPTS {
            let out = self
                .lease_client
                .delete_item()
                .table_name(&self.hot.table)
                .set_key(Some(self.hot.key("LEASE")))
                .condition_expression("#owner = :me")
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_values(":me", s(owner))
                .send()
                .await;
            match classify(out) {
                Call::Done(_) | Call::Condition => {
                    self.lease_writes.fetch_add(1, Relaxed);
                    return;
                }
                Call::Unavailable(_) => {
                    tokio::time::sleep(backoff(Duration::from_millis(2), attempt, 50)).await
                }
            }
        }
        self.releases_lost.fetch_add(1, Relaxed);
    }

    /// Under the lease: read, decide, write. The stock write is unconditional: the lease is
    /// the lock, as in the design it models (no fencing token).
    async fn locked(&self, buyer: usize, run: &Run) -> Answer {
        let available = match self.hot.stock_to_sell().await {
            Ok((available, _)) => available,
            Err(answer) => return answer,
        };
        let out = self
            .hot
            .update_stock()
            .update_expression("SET available = :a")
            .expression_attribute_values(":a", n(available - 1))
            .send()
            .await;
        match classify(out) {
            Call::Done(_) | Call::Condition => self.hot.sold(buyer, available, run).await,
            Call::Unavailable(code) => Answer::Unavailable(code),
        }
    }
}

impl Design for LeaseLock {
    async fn buy(&self, _worker: usize, buyer: usize, run: &Run) -> Answer {
        // No lock needed to see that nothing is left.
        match self.hot.read_stock().await {
            Ok((available, _)) if available < 1 => return Answer::Decided(Decision::SoldOut),
            Ok(_) => {}
            Err(code) => return Answer::Unavailable(code),
        }
        let owner = format!("buyer-{buyer}-{:08x}", rand::random::<u32>());
        let deadline = Instant::now() + LOCK_WAIT;
        let mut polls = 0;
        loop {
            // A throttled attempt is just another failed one: keep waiting.
            if self.looks_free().await && matches!(self.acquire(&owner).await, Ok(true)) {
                break;
            }
            if Instant::now() >= deadline {
                return Answer::Decided(Decision::Refused("lock_wait_timeout"));
            }
            tokio::time::sleep(backoff(POLL_BASE, polls, POLL_CAP_MS)).await;
            polls += 1;
        }
        let answer = self.locked(buyer, run).await;
        self.release(&owner).await;
        answer
    }
}

impl HotDesign for LeaseLock {
    fn hots(&self) -> &[Hot] {
        std::slice::from_ref(&self.hot)
    }
}

pub async fn run(setup: Setup<'_>) -> anyhow::Result<(DesignReport, Details)> {
    let (counter, client) = setup.counted_client("lease_lock").await;
    let lease_client = aws_sdk_dynamodb::Client::from_conf(
        client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build(),
    );
    let design = Arc::new(LeaseLock {
        hot: Hot::new(client, setup.table, setup.sku),
        lease_client,
        lease_writes: AtomicU64::new(0),
        releases_lost: AtomicU64::new(0),
    });
    let (report, mut details) =
        hot::run_design(design.clone(), setup.sale, setup.model, &counter).await?;
    let lease_writes = design.lease_writes.load(Relaxed);
    details.notes.insert(
        "lease_item_writes_per_sold_unit".into(),
        serde_json::json!(crate::sale::per_unit(lease_writes as f64, details.sold)),
    );
    details
        .notes
        .insert("lease_item_writes".into(), serde_json::json!(lease_writes));
    details.notes.insert(
        "releases_lost".into(),
        serde_json::json!(design.releases_lost.load(Relaxed)),
    );
    Ok((report, details))
}
