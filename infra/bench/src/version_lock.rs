//! `version_lock`: the classic optimistic lock. Read the stock and its version, write the new
//! stock on condition that the version has not moved, and on a lost race read again, at most
//! 3 retries with backoff, all inside the API call. A buyer who loses four races is refused,
//! even while stock is left.

use crate::hot::{self, classify, n, Call, Hot, HotDesign, Setup};
use crate::sale::{backoff, Answer, Decision, Design, DesignReport, Details, Run};
use std::sync::Arc;
use std::time::Duration;

/// Retries after the first attempt.
pub const RETRIES: u32 = 3;
/// First pause after a lost race; doubles each retry (10, 20, 40 ms, jittered ±50 %).
const RETRY_BASE: Duration = Duration::from_millis(10);

pub struct VersionLock {
    hot: Hot,
}

impl Design for VersionLock {
    async fn buy(&self, _worker: usize, buyer: usize, run: &Run) -> Answer {
        for attempt in 0..=RETRIES {
            if attempt > 0 {
                tokio::time::sleep(backoff(RETRY_BASE, attempt - 1, 1_000)).await;
            }
            let (available, version) = match self.hot.stock_to_sell().await {
                Ok(stock) => stock,
                Err(answer) => return answer,
            };
            let out = self
                .hot
                .update_stock()
                .update_expression("SET available = :a, version = :next")
                .condition_expression("version = :v")
                .expression_attribute_values(":a", n(available - 1))
                .expression_attribute_values(":next", n(version + 1))
                .expression_attribute_values(":v", n(version))
                .send()
                .await;
            match classify(out) {
                Call::Done(_) => return self.hot.sold(buyer, available, run).await,
                Call::Condition => self.hot.stock_write(),
                Call::Unavailable(code) => return Answer::Unavailable(code),
            }
        }
        Answer::Decided(Decision::Refused("retries_exhausted"))
    }
}

impl HotDesign for VersionLock {
    fn hots(&self) -> &[Hot] {
        std::slice::from_ref(&self.hot)
    }
}

pub async fn run(setup: Setup<'_>) -> anyhow::Result<(DesignReport, Details)> {
    let (counter, client) = setup.counted_client("version_lock").await;
    let hot = Hot::new(client, setup.table, setup.sku);
    hot::run_design(
        Arc::new(VersionLock { hot }),
        setup.sale,
        setup.model,
        &counter,
    )
    .await
}
