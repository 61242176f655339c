//! A capacity model for local runs: makes DynamoDB Local behave like DynamoDB under load.
//!
//! DynamoDB Local neither throttles nor raises `TransactionConflict`, so on one machine a hot
//! item looks free and a benchmark hides the real bottleneck. [`CapacityModel`] wraps the SDK's
//! HTTP client and, before a DynamoDB write leaves the process, applies what DynamoDB would:
//!
//! 1. **A write budget per item** (table + key attributes): a token bucket refilled at
//!    [`CapacityModel::budget_per_item`] write units per second, with a burst of one second's
//!    budget. `PutItem`/`UpdateItem`/`DeleteItem` cost 1 unit, `BatchWriteItem` 1 per item,
//!    `TransactWriteItems` 2 per item (`ConditionCheck` items too). Units are charged when a
//!    request is admitted, whatever DynamoDB answers (a failed condition costs the same).
//!    **And a budget per partition key value**, the same size: items that share a partition
//!    key (`pk` unless [`CapacityModel::with_key_attributes`] says otherwise) start out in one
//!    partition, which takes 1,000 write units/s however many items it holds, so they share
//!    one bucket on top of their own. (DynamoDB splits a hot partition after throttling it for
//!    a while; the model never does, which is what a sale's first minutes look like.) A
//!    request with any item or partition short of units is not sent; it gets the answer an
//!    on-demand table gives for a hot key: `ThrottlingException` (which the SDK retries, 3 attempts by default)
//!    for single-item and batch writes, and `TransactionCanceledException` with
//!    `ThrottlingError` on the throttled items (`None` on the others) for transactions.
//! 2. **Transaction conflicts**: the items of every `TransactWriteItems` are held from the
//!    moment it is sent until its response arrives (or the attempt is dropped). A transaction
//!    touching a held item is not sent and gets `TransactionCanceledException` with
//!    `TransactionConflict` on the overlapping items; a `PutItem`/`UpdateItem`/`DeleteItem` on
//!    a held item gets `TransactionConflictException`. Neither is retried by the SDK.
//!
//! Everything else (reads, SQS, any other host) passes through untouched. The synthetic answers
//! are the JSON DynamoDB sends, so the SDK parses, classifies and retries them exactly like real
//! ones. The model is opt-in (benchmarks only); nothing uses it by default.
//!
//! Simplifications: item size is ignored (every write is one unit per item); a
//! `BatchWriteItem` with any throttled item is refused whole rather than partly processed with
//! `UnprocessedItems`; conflicted or throttled requests spend no units; `TransactGetItems` is
//! treated as a read and never conflicts.

use crate::answers::{
    canceled_body, dynamodb_operation, error_body, json_error_response, CONFLICT_MESSAGE,
    THROTTLE_MESSAGE,
};
use crate::judge::{judged_client, Judge, Verdict};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Key attribute names assumed for a table until a request's `Key` shows the real ones.
const DEFAULT_KEY_ATTRIBUTES: [&str; 2] = ["pk", "sk"];

/// A DynamoDB write-capacity and transaction-conflict model for local runs (see the module
/// docs). Cheap to clone: clones share one state.
#[derive(Clone, Debug)]
pub struct CapacityModel {
    inner: Arc<Inner>,
}

/// What the model did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct CapacityStats {
    /// Requests answered with a synthetic throttle (each SDK attempt counts).
    pub throttles: u64,
    /// Requests answered with a synthetic transaction conflict.
    pub conflicts: u64,
    /// Write units charged to items by the requests that were sent.
    pub write_units_admitted: f64,
}

#[derive(Debug)]
struct Inner {
    /// Write units per second per item.
    budget: f64,
    /// Bucket size: one second's budget, but at least one transaction item's cost, so a tiny
    /// budget still lets transactions through now and then.
    burst: f64,
    clock: Clock,
    state: Mutex<State>,
    throttles: AtomicU64,
    conflicts: AtomicU64,
    units_admitted: AtomicU64,
    request_ids: AtomicU64,
}

#[derive(Debug)]
enum Clock {
    Real(Instant),
    #[cfg(test)]
    Manual(Arc<AtomicU64>),
}

impl Clock {
    fn now(&self) -> Duration {
        match self {
            Clock::Real(start) => start.elapsed(),
            #[cfg(test)]
            Clock::Manual(nanos) => Duration::from_nanos(nanos.load(Relaxed)),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<ItemKey, Bucket>,
    /// One bucket per partition key value: (table, canonical partition key attribute).
    partitions: HashMap<(String, String), Bucket>,
    /// Items of transactions sent and not yet answered, with how many hold each.
    in_flight: HashMap<ItemKey, u32>,
    /// Key attribute names per table, learned from `Key` maps; used to find the key of an
    /// item in a `Put`.
    key_names: HashMap<String, Vec<String>>,
    default_key_names: Vec<String>,
    /// The partition key attribute's name (the first of the key attribute names given).
    partition_key: String,
    /// Bucket count above which full buckets are dropped (they equal absent ones).
    prune_at: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Duration,
}

/// Table name + canonical key attributes, and the partition the item lives in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ItemKey {
    table: String,
    key: String,
    /// The canonical partition key attribute; the whole key when the item has no such
    /// attribute (then it is a partition of its own).
    partition: String,
}

impl ItemKey {
    fn partition(&self) -> (String, String) {
        (self.table.clone(), self.partition.clone())
    }
}

const MIN_PRUNE_AT: usize = 4096;

impl CapacityModel {
    /// `item_write_units_per_s`: DynamoDB's per-item budget (1000.0); `scale`: factor applied
    /// to it locally (e.g. 0.05 → 50 WCU/s per item) so it bites on one machine.
    ///
    /// # Panics
    /// When the resulting budget is not a positive number (`f64::INFINITY` is allowed: no
    /// throttling, conflicts only).
    pub fn new(item_write_units_per_s: f64, scale: f64) -> Self {
        let budget = item_write_units_per_s * scale;
        assert!(
            budget > 0.0,
            "capacity model needs a positive per-item budget, got {item_write_units_per_s} × {scale}"
        );
        Self::with_clock(budget, Clock::Real(Instant::now()))
    }

    fn with_clock(budget: f64, clock: Clock) -> Self {
        Self {
            inner: Arc::new(Inner {
                budget,
                burst: budget.max(2.0),
                clock,
                state: Mutex::new(State {
                    default_key_names: DEFAULT_KEY_ATTRIBUTES.map(str::to_owned).to_vec(),
                    partition_key: DEFAULT_KEY_ATTRIBUTES[0].to_owned(),
                    prune_at: MIN_PRUNE_AT,
                    ..State::default()
                }),
                throttles: AtomicU64::new(0),
                conflicts: AtomicU64::new(0),
                units_admitted: AtomicU64::new(0),
                request_ids: AtomicU64::new(0),
            }),
        }
    }

    /// Key attribute names, partition key first, assumed for `PutItem` items of a table whose
    /// key the model has not yet seen in an `UpdateItem`/`DeleteItem`/`ConditionCheck` `Key`
    /// (default `pk`, `sk`). The first also names the partition key of every table.
    pub fn with_key_attributes(self, names: &[&str]) -> Self {
        let mut state = self.inner.lock();
        state.default_key_names = names.iter().map(|n| (*n).to_owned()).collect();
        if let Some(first) = names.first() {
            state.partition_key = (*first).to_owned();
        }
        drop(state);
        self
    }

    /// Write units per second each item gets: `item_write_units_per_s * scale`.
    pub fn budget_per_item(&self) -> f64 {
        self.inner.budget
    }

    pub fn stats(&self) -> CapacityStats {
        CapacityStats {
            throttles: self.inner.throttles.load(Relaxed),
            conflicts: self.inner.conflicts.load(Relaxed),
            write_units_admitted: self.inner.units_admitted.load(Relaxed) as f64,
        }
    }

    /// `inner` with the model in front of it: give the result to the SDK's `http_client`
    /// setter (`aws_config::ConfigLoader`, `SdkConfig::Builder`, `aws_sdk_dynamodb::Config`).
    pub fn http_client(&self, inner: SharedHttpClient) -> SharedHttpClient {
        judged_client(self.clone(), inner)
    }
}

impl Judge for CapacityModel {
    fn judge(&self, request: &HttpRequest) -> Verdict {
        self.inner.admit(request)
    }
}

/// One DynamoDB write request as the model sees it.
enum Write {
    Single(ItemKey),
    Transact(Vec<ItemKey>),
    Batch(Vec<ItemKey>),
}

/// Items of an in-flight transaction, the guard of [`Verdict::ForwardHolding`]; released on
/// drop (response, error or cancelled attempt).
struct Held {
    model: Arc<Inner>,
    keys: Vec<ItemKey>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut state = self.model.lock();
        for key in self.keys.drain(..) {
            if let Some(n) = state.in_flight.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    state.in_flight.remove(&key);
                }
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is one step.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(self: &Arc<Self>, request: &HttpRequest) -> Verdict {
        let Some(op) = dynamodb_operation(request) else {
            return Verdict::Forward;
        };
        if !matches!(
            op,
            "PutItem" | "UpdateItem" | "DeleteItem" | "TransactWriteItems" | "BatchWriteItem"
        ) {
            return Verdict::Forward;
        }
        let Some(body) = request
            .body()
            .bytes()
            .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        else {
            return Verdict::Forward;
        };
        let region = region_of(request);
        let mut state = self.lock();
        let Some(write) = parse_write(op, &body, &mut state) else {
            // Not a request DynamoDB would accept; let it answer the validation error.
            return Verdict::Forward;
        };
        let now = self.clock.now();
        match write {
            Write::Single(key) if state.in_flight.contains_key(&key) => {
                drop(state);
                self.conflicts.fetch_add(1, Relaxed);
                self.refuse(error_body("TransactionConflictException", CONFLICT_MESSAGE))
            }
            Write::Single(key) => self.charge_one_write(state, &[key], now, &region),
            Write::Batch(keys) => self.charge_one_write(state, &keys, now, &region),
            Write::Transact(keys) => {
                let conflicting: Vec<bool> = keys
                    .iter()
                    .map(|k| state.in_flight.contains_key(k))
                    .collect();
                if conflicting.contains(&true) {
                    drop(state);
                    self.conflicts.fetch_add(1, Relaxed);
                    return self.refuse(canceled_body(&conflicting, "TransactionConflict"));
                }
                if !self.charge(&mut state, &keys, 2.0, now) {
                    let short = self.short_items(&state, &keys, 2.0, now);
                    drop(state);
                    self.throttles.fetch_add(1, Relaxed);
                    return self.refuse(canceled_body(&short, "ThrottlingError"));
                }
                let mut held = keys;
                held.sort_by(|a, b| (&a.table, &a.key).cmp(&(&b.table, &b.key)));
                held.dedup();
                for key in &held {
                    *state.in_flight.entry(key.clone()).or_default() += 1;
                }
                Verdict::ForwardHolding(Box::new(Held {
                    model: Arc::clone(self),
                    keys: held,
                }))
            }
        }
    }

    /// A write outside a transaction (one unit an item): forwarded if `keys` have the units,
    /// otherwise refused as DynamoDB throttles it.
    fn charge_one_write(
        &self,
        mut state: MutexGuard<'_, State>,
        keys: &[ItemKey],
        now: Duration,
        region: &str,
    ) -> Verdict {
        if !self.charge(&mut state, keys, 1.0, now) {
            drop(state);
            self.throttles.fetch_add(1, Relaxed);
            return self.refuse(throttling_body(keys, region));
        }
        Verdict::Forward
    }

    /// Charges `cost` per entry of `keys` to its item and to its partition if every item and
    /// every partition has the units; all or nothing.
    fn charge(&self, state: &mut State, keys: &[ItemKey], cost: f64, now: Duration) -> bool {
        if self.budget.is_infinite() {
            self.admitted(keys.len() as f64 * cost);
            return true;
        }
        let mut items: HashMap<&ItemKey, f64> = HashMap::new();
        let mut partitions: HashMap<(String, String), f64> = HashMap::new();
        for key in keys {
            *items.entry(key).or_default() += cost;
            *partitions.entry(key.partition()).or_default() += cost;
        }
        let fits = items
            .iter()
            .all(|(key, units)| self.refill(state.buckets.get(*key), now) >= *units)
            && partitions
                .iter()
                .all(|(p, units)| self.refill(state.partitions.get(p), now) >= *units);
        if !fits {
            return false;
        }
        for (key, units) in items {
            let tokens = self.refill(state.buckets.get(key), now) - units;
            state
                .buckets
                .insert(key.clone(), Bucket { tokens, at: now });
        }
        for (partition, units) in partitions {
            let tokens = self.refill(state.partitions.get(&partition), now) - units;
            state
                .partitions
                .insert(partition, Bucket { tokens, at: now });
        }
        self.admitted(keys.len() as f64 * cost);
        self.prune(state, now);
        true
    }

    /// Which entries of `keys` lack the units, in their item or their partition (counting
    /// the entries that share one together).
    fn short_items(&self, state: &State, keys: &[ItemKey], cost: f64, now: Duration) -> Vec<bool> {
        keys.iter()
            .map(|key| {
                let item_need = cost * keys.iter().filter(|k| *k == key).count() as f64;
                let partition_need = cost
                    * keys
                        .iter()
                        .filter(|k| k.table == key.table && k.partition == key.partition)
                        .count() as f64;
                self.refill(state.buckets.get(key), now) < item_need
                    || self.refill(state.partitions.get(&key.partition()), now) < partition_need
            })
            .collect()
    }

    /// A bucket's tokens now, after refilling (an unseen item or partition has a full one).
    fn refill(&self, bucket: Option<&Bucket>, now: Duration) -> f64 {
        match bucket {
            None => self.burst,
            Some(b) => {
                let elapsed = now.saturating_sub(b.at).as_secs_f64();
                (b.tokens + elapsed * self.budget).min(self.burst)
            }
        }
    }

    fn admitted(&self, units: f64) {
        self.units_admitted.fetch_add(units as u64, Relaxed);
    }

    /// Drops buckets that have refilled completely, once there are many.
    fn prune(&self, state: &mut State, now: Duration) {
        if state.buckets.len() + state.partitions.len() < state.prune_at {
            return;
        }
        let (budget, burst) = (self.budget, self.burst);
        let full = |b: &Bucket| b.tokens + now.saturating_sub(b.at).as_secs_f64() * budget >= burst;
        state.buckets.retain(|_, b| !full(b));
        state.partitions.retain(|_, b| !full(b));
        state.prune_at = ((state.buckets.len() + state.partitions.len()) * 2).max(MIN_PRUNE_AT);
    }

    fn refuse(&self, body: Value) -> Verdict {
        let id = self.request_ids.fetch_add(1, Relaxed);
        Verdict::Answer(Box::new(json_error_response(
            400,
            &body,
            &format!("CAPACITYMODEL{id:020}"),
        )))
    }
}

/// The region from the request's SigV4 credential scope, for ARNs in throttling reasons.
fn region_of(request: &HttpRequest) -> String {
    request
        .headers()
        .get("authorization")
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').nth(2))
        .filter(|r| !r.is_empty())
        .unwrap_or("local")
        .to_owned()
}

fn table_arn(table: &str, region: &str) -> String {
    if table.starts_with("arn:") {
        table.to_owned()
    } else {
        format!("arn:aws:dynamodb:{region}:000000000000:table/{table}")
    }
}

/// `ThrottlingException` as an on-demand table answers a hot key.
fn throttling_body(keys: &[ItemKey], region: &str) -> Value {
    let mut tables: Vec<&str> = keys.iter().map(|k| k.table.as_str()).collect();
    tables.sort_unstable();
    tables.dedup();
    let mut body = error_body("ThrottlingException", THROTTLE_MESSAGE);
    body["throttlingReasons"] = tables
        .into_iter()
        .map(|t| {
            json!({
                "reason": "TableWriteKeyRangeThroughputExceeded",
                "resource": table_arn(t, region),
            })
        })
        .collect();
    body
}

fn parse_write(op: &str, body: &Value, state: &mut State) -> Option<Write> {
    match op {
        "PutItem" => {
            let table = body.get("TableName")?.as_str()?;
            Some(Write::Single(item_key(state, table, body.get("Item")?)?))
        }
        "UpdateItem" | "DeleteItem" => {
            let table = body.get("TableName")?.as_str()?;
            Some(Write::Single(key_of(state, table, body.get("Key")?)?))
        }
        "TransactWriteItems" => {
            let items = body.get("TransactItems")?.as_array()?;
            items
                .iter()
                .map(|entry| {
                    let (kind, action) = entry.as_object()?.iter().next()?;
                    let table = action.get("TableName")?.as_str()?;
                    match kind.as_str() {
                        "Put" => item_key(state, table, action.get("Item")?),
                        "Update" | "Delete" | "ConditionCheck" => {
                            key_of(state, table, action.get("Key")?)
                        }
                        _ => None,
                    }
                })
                .collect::<Option<Vec<_>>>()
                .map(Write::Transact)
        }
        "BatchWriteItem" => {
            let mut keys = Vec::new();
            for (table, requests) in body.get("RequestItems")?.as_object()? {
                for request in requests.as_array()? {
                    if let Some(put) = request.get("PutRequest") {
                        keys.push(item_key(state, table, put.get("Item")?)?);
                    } else if let Some(delete) = request.get("DeleteRequest") {
                        keys.push(key_of(state, table, delete.get("Key")?)?);
                    } else {
                        return None;
                    }
                }
            }
            Some(Write::Batch(keys))
        }
        _ => None,
    }
}

/// The item key of a `Key` map; also remembers the table's key attribute names.
fn key_of(state: &mut State, table: &str, key: &Value) -> Option<ItemKey> {
    let key = key.as_object()?;
    if key.is_empty() {
        return None;
    }
    let mut names: Vec<String> = key.keys().cloned().collect();
    names.sort_unstable();
    if state.key_names.get(table) != Some(&names) {
        state.key_names.insert(table.to_owned(), names);
    }
    let whole = canonical(key.iter());
    Some(ItemKey {
        table: table.to_owned(),
        partition: partition_of(state, key).unwrap_or_else(|| whole.clone()),
        key: whole,
    })
}

/// The item key of a full item (`Put`): its key attributes, as learned for the table or the
/// defaults; the whole item when none of them is present.
fn item_key(state: &State, table: &str, item: &Value) -> Option<ItemKey> {
    let item = item.as_object()?;
    let names = state
        .key_names
        .get(table)
        .unwrap_or(&state.default_key_names);
    let key: Vec<(&String, &Value)> = item.iter().filter(|(n, _)| names.contains(n)).collect();
    let key = if key.is_empty() {
        canonical(item.iter())
    } else {
        canonical(key.into_iter())
    };
    Some(ItemKey {
        table: table.to_owned(),
        partition: partition_of(state, item).unwrap_or_else(|| key.clone()),
        key,
    })
}

/// The canonical partition key attribute of a key or an item, if it has one.
fn partition_of(state: &State, attributes: &Map<String, Value>) -> Option<String> {
    attributes
        .get_key_value(&state.partition_key)
        .map(|pair| canonical(std::iter::once(pair)))
}

/// A deterministic text for a set of attributes, independent of their order.
fn canonical<'a>(attributes: impl Iterator<Item = (&'a String, &'a Value)>) -> String {
    let mut parts: Vec<String> = attributes
        .map(|(name, value)| format!("{}={}", Value::from(name.as_str()), sorted(value)))
        .collect();
    parts.sort_unstable();
    parts.join(",")
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers::{ERROR_PREFIX, TARGET_PREFIX};
    use crate::judge::JudgedConnector;
    use aws_sdk_dynamodb::config::retry::RetryConfig;
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
    use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, TransactWriteItem, Update};
    use aws_smithy_runtime_api::client::http::http_client_fn;
    use aws_smithy_runtime_api::client::http::{
        HttpConnector, HttpConnectorFuture, SharedHttpConnector,
    };
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use tokio::sync::{Notify, Semaphore};

    const TABLE: &str = "flash";

    fn manual(budget: f64) -> (CapacityModel, Arc<AtomicU64>) {
        let nanos = Arc::new(AtomicU64::new(0));
        let model = CapacityModel::with_clock(budget, Clock::Manual(Arc::clone(&nanos)));
        (model, nanos)
    }

    /// [`manual`], judging what a default [`Mock`] answers.
    fn judged(budget: f64) -> (CapacityModel, Arc<AtomicU64>, Mock, JudgedConnector) {
        let (model, clock) = manual(budget);
        let mock = Mock::default();
        let conn = mock.connector(&model);
        (model, clock, mock, conn)
    }

    /// [`judged`], through the SDK's DynamoDB client.
    fn judged_by_sdk(
        budget: f64,
    ) -> (
        CapacityModel,
        Arc<AtomicU64>,
        Mock,
        aws_sdk_dynamodb::Client,
    ) {
        let (model, clock) = manual(budget);
        let mock = Mock::default();
        let client = mock.sdk_client(&model);
        (model, clock, mock, client)
    }

    /// One transaction through the SDK, updating the item (`pk`, `sk`).
    async fn transact_one(
        client: &aws_sdk_dynamodb::Client,
        pk: &str,
        sk: &str,
    ) -> Result<(), String> {
        client
            .transact_write_items()
            .transact_items(sdk_update(pk, sk))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    }

    fn advance(clock: &AtomicU64, by: Duration) {
        clock.fetch_add(by.as_nanos() as u64, Relaxed);
    }

    /// The inner HTTP client: answers `{}` (200) and counts calls; requests whose body contains
    /// `hold`'s marker wait for a permit of its semaphore.
    #[derive(Debug, Clone, Default)]
    struct Mock {
        calls: Arc<AtomicU64>,
        hold: Option<(&'static str, Arc<Semaphore>)>,
        entered: Arc<Notify>,
    }

    impl Mock {
        fn holding(marker: &'static str) -> (Self, Arc<Semaphore>) {
            let gate = Arc::new(Semaphore::new(0));
            let mock = Self {
                hold: Some((marker, Arc::clone(&gate))),
                ..Self::default()
            };
            (mock, gate)
        }

        fn calls(&self) -> u64 {
            self.calls.load(Relaxed)
        }

        fn connector(&self, model: &CapacityModel) -> JudgedConnector {
            JudgedConnector {
                judge: Arc::new(model.clone()),
                inner: SharedHttpConnector::new(self.clone()),
            }
        }

        fn sdk_client(&self, model: &CapacityModel) -> aws_sdk_dynamodb::Client {
            let mock = self.clone();
            let inner = http_client_fn(move |_, _| SharedHttpConnector::new(mock.clone()));
            let config = aws_sdk_dynamodb::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("eu-west-1"))
                .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
                .endpoint_url("http://127.0.0.1:1")
                .retry_config(
                    RetryConfig::standard()
                        .with_initial_backoff(Duration::from_millis(1))
                        .with_max_backoff(Duration::from_millis(5)),
                )
                .http_client(model.http_client(inner))
                .build();
            aws_sdk_dynamodb::Client::from_conf(config)
        }
    }

    impl HttpConnector for Mock {
        fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
            self.calls.fetch_add(1, Relaxed);
            let body = String::from_utf8_lossy(request.body().bytes().unwrap_or_default());
            let gate = self
                .hold
                .as_ref()
                .filter(|(marker, _)| body.contains(marker))
                .map(|(_, gate)| Arc::clone(gate));
            let entered = Arc::clone(&self.entered);
            HttpConnectorFuture::new(async move {
                entered.notify_one();
                if let Some(gate) = gate {
                    let _permit = gate.acquire().await.expect("gate stays open");
                }
                let mut response = HttpResponse::new(
                    StatusCode::try_from(200).expect("valid"),
                    SdkBody::from("{}"),
                );
                response
                    .headers_mut()
                    .insert("content-type", "application/x-amz-json-1.0");
                Ok(response)
            })
        }
    }

    fn request(op: &str, body: Value) -> HttpRequest {
        let mut request = HttpRequest::new(SdkBody::from(body.to_string()));
        request.set_method("POST").expect("valid method");
        request
            .set_uri("http://127.0.0.1:8000/")
            .expect("valid uri");
        request
            .headers_mut()
            .insert("x-amz-target", format!("{TARGET_PREFIX}{op}"));
        request.headers_mut().insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/eu-west-1/dynamodb/aws4_request, \
             SignedHeaders=host, Signature=00",
        );
        request
    }

    fn key(pk: &str, sk: &str) -> Value {
        json!({ "pk": { "S": pk }, "sk": { "S": sk } })
    }

    fn put(pk: &str, sk: &str) -> HttpRequest {
        let mut item = key(pk, sk);
        item["status"] = json!({ "S": "queued" });
        request("PutItem", json!({ "TableName": TABLE, "Item": item }))
    }

    fn update(pk: &str, sk: &str) -> HttpRequest {
        request(
            "UpdateItem",
            json!({
                "TableName": TABLE,
                "Key": key(pk, sk),
                "UpdateExpression": "SET available = available - :n",
            }),
        )
    }

    /// A transaction updating each `(pk, sk)`.
    fn transact(items: &[(&str, &str)]) -> HttpRequest {
        let items: Vec<Value> = items
            .iter()
            .map(|(pk, sk)| {
                json!({ "Update": {
                    "TableName": TABLE,
                    "Key": key(pk, sk),
                    "UpdateExpression": "SET v = :v",
                }})
            })
            .collect();
        request("TransactWriteItems", json!({ "TransactItems": items }))
    }

    /// The status `conn` answers `request` with.
    async fn status_of(conn: &JudgedConnector, request: HttpRequest) -> u16 {
        answer(conn, request).await.0
    }

    async fn answer(conn: &JudgedConnector, request: HttpRequest) -> (u16, Value) {
        let response = conn.call(request).await.expect("no connector error");
        let body = response.body().bytes().expect("in-memory body");
        (
            response.status().as_u16(),
            serde_json::from_slice(body).expect("json body"),
        )
    }

    fn error_type(body: &Value) -> &str {
        body["__type"]
            .as_str()
            .and_then(|t| t.strip_prefix(ERROR_PREFIX))
            .unwrap_or("")
    }

    fn reason_codes(body: &Value) -> Vec<&str> {
        body["CancellationReasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .map(|r| r["Code"].as_str().expect("code"))
            .collect()
    }

    #[test]
    fn budget_is_the_scaled_item_limit() {
        let model = CapacityModel::new(1000.0, 0.05);
        assert!((model.budget_per_item() - 50.0).abs() < 1e-9);
        assert_eq!(model.stats(), CapacityStats::default());
        assert!(std::panic::catch_unwind(|| CapacityModel::new(1000.0, 0.0)).is_err());
    }

    #[tokio::test]
    async fn single_writes_admit_the_burst_then_throttle() {
        let (model, _clock, mock, conn) = judged(5.0);
        for _ in 0..5 {
            assert_eq!(status_of(&conn, put("PRODUCT#a", "SHARD#000")).await, 200);
        }
        let (status, body) = answer(&conn, update("PRODUCT#a", "SHARD#000")).await;
        assert_eq!(status, 400);
        assert_eq!(error_type(&body), "ThrottlingException");
        assert_eq!(
            body["throttlingReasons"][0]["reason"],
            "TableWriteKeyRangeThroughputExceeded"
        );
        assert_eq!(
            body["throttlingReasons"][0]["resource"],
            "arn:aws:dynamodb:eu-west-1:000000000000:table/flash"
        );
        // An item in another partition has its own budget.
        assert_eq!(
            status_of(&conn, put("PRODUCT#a#SHARD#001", "SHARD#001")).await,
            200
        );
        assert_eq!(mock.calls(), 6);
        let stats = model.stats();
        assert_eq!(stats.throttles, 1);
        assert_eq!(stats.conflicts, 0);
        assert_eq!(stats.write_units_admitted, 6.0);
    }

    #[tokio::test]
    async fn budget_refills_over_time_up_to_one_second() {
        let (model, clock, _mock, conn) = judged(5.0);
        for _ in 0..5 {
            assert_eq!(status_of(&conn, update("p", "s")).await, 200);
        }
        assert_eq!(status_of(&conn, update("p", "s")).await, 400);
        advance(&clock, Duration::from_millis(100)); // half a unit
        assert_eq!(status_of(&conn, update("p", "s")).await, 400);
        advance(&clock, Duration::from_millis(100)); // one unit
        assert_eq!(status_of(&conn, update("p", "s")).await, 200);
        assert_eq!(status_of(&conn, update("p", "s")).await, 400);
        // A long pause refills one second's budget, no more.
        advance(&clock, Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(status_of(&conn, update("p", "s")).await, 200);
        }
        assert_eq!(status_of(&conn, update("p", "s")).await, 400);
        assert_eq!(model.stats().throttles, 4);
        assert_eq!(model.stats().write_units_admitted, 11.0);
    }

    #[tokio::test]
    async fn real_clock_refills() {
        let model = CapacityModel::new(1000.0, 0.004); // 4 units/s: one every 250 ms
        let conn = Mock::default().connector(&model);
        for _ in 0..4 {
            assert_eq!(status_of(&conn, update("p", "s")).await, 200);
        }
        assert_eq!(status_of(&conn, update("p", "s")).await, 400);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(status_of(&conn, update("p", "s")).await, 200);
    }

    #[tokio::test]
    async fn transaction_items_cost_two_units_each() {
        let (model, _clock, mock, conn) = judged(4.0);
        // A ConditionCheck costs as much as a write.
        let tx = request(
            "TransactWriteItems",
            json!({ "TransactItems": [
                { "ConditionCheck": {
                    "TableName": TABLE, "Key": key("a", "1"),
                    "ConditionExpression": "attribute_exists(pk)" } },
                { "Put": { "TableName": TABLE, "Item": {
                    "pk": { "S": "b" }, "sk": { "S": "1" }, "n": { "N": "1" } } } },
            ]}),
        );
        assert_eq!(status_of(&conn, tx).await, 200);
        assert_eq!(model.stats().write_units_admitted, 4.0);
        // a and b have 2 units left: one more transaction each.
        assert_eq!(
            answer(&conn, transact(&[("a", "1"), ("c", "1")])).await.0,
            200
        );
        let (status, body) = answer(&conn, transact(&[("c", "1"), ("a", "1")])).await;
        assert_eq!(status, 400);
        assert_eq!(error_type(&body), "TransactionCanceledException");
        assert_eq!(reason_codes(&body), ["None", "ThrottlingError"]);
        assert!(body["Message"]
            .as_str()
            .unwrap()
            .ends_with("[None, ThrottlingError]"));
        // Nothing of the refused transaction was charged: c still has 2 units.
        assert_eq!(answer(&conn, transact(&[("c", "1")])).await.0, 200);
        // b has 2 units: a single write (1 unit) fits twice, then it is throttled.
        assert_eq!(status_of(&conn, update("b", "1")).await, 200);
        assert_eq!(status_of(&conn, update("b", "1")).await, 200);
        assert_eq!(status_of(&conn, update("b", "1")).await, 400);
        assert_eq!(mock.calls(), 5);
        let stats = model.stats();
        assert_eq!(stats.throttles, 2);
        assert_eq!(stats.write_units_admitted, 4.0 + 4.0 + 2.0 + 2.0);
    }

    #[tokio::test]
    async fn overlapping_transaction_conflicts_while_the_first_is_in_flight() {
        let model = CapacityModel::new(1000.0, 1.0);
        let (mock, gate) = Mock::holding("HOLD");
        let conn = mock.connector(&model);
        let first = conn.call(transact(&[
            ("PRODUCT#x", "SHARD#000"),
            ("ORDER#HOLD", "ORDER"),
        ]));
        let first = tokio::spawn(first);
        mock.entered.notified().await;

        let (status, body) = answer(
            &conn,
            transact(&[("ORDER#2", "ORDER"), ("PRODUCT#x", "SHARD#000")]),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(error_type(&body), "TransactionCanceledException");
        assert_eq!(reason_codes(&body), ["None", "TransactionConflict"]);

        // A single-item write on a held item conflicts too.
        let (status, body) = answer(&conn, update("PRODUCT#x", "SHARD#000")).await;
        assert_eq!(status, 400);
        assert_eq!(error_type(&body), "TransactionConflictException");
        let (status, body) = answer(&conn, put("PRODUCT#x", "SHARD#000")).await;
        assert_eq!(
            (status, error_type(&body)),
            (400, "TransactionConflictException")
        );

        // Other items are free.
        let other = transact(&[("PRODUCT#x", "SHARD#001"), ("ORDER#3", "ORDER")]);
        assert_eq!(status_of(&conn, other).await, 200);
        assert_eq!(
            status_of(&conn, update("PRODUCT#y", "SHARD#000")).await,
            200
        );
        assert_eq!(model.stats().conflicts, 3);

        gate.add_permits(1);
        let response = first.await.expect("joined").expect("answered");
        assert_eq!(response.status().as_u16(), 200);
        // Released with the response.
        let again = transact(&[("ORDER#4", "ORDER"), ("PRODUCT#x", "SHARD#000")]);
        assert_eq!(status_of(&conn, again).await, 200);
        assert_eq!(
            status_of(&conn, update("PRODUCT#x", "SHARD#000")).await,
            200
        );
        assert_eq!(mock.calls(), 5);
        assert_eq!(model.stats().conflicts, 3);
        assert_eq!(model.stats().throttles, 0);
    }

    #[tokio::test]
    async fn a_dropped_attempt_releases_its_items() {
        let model = CapacityModel::new(1000.0, 1.0);
        let (mock, _gate) = Mock::holding("HOLD");
        let conn = mock.connector(&model);
        let pending = conn.call(transact(&[("HOLD", "1")]));
        assert_eq!(status_of(&conn, update("HOLD", "1")).await, 400);
        drop(pending); // e.g. the SDK's attempt timeout
        let (mock2, _) = Mock::holding("never");
        let conn2 = mock2.connector(&model);
        assert_eq!(answer(&conn2, update("HOLD", "1")).await.0, 200);
        assert!(model.inner.lock().in_flight.is_empty());
    }

    #[tokio::test]
    async fn reads_and_other_services_are_never_charged() {
        let (model, _clock, mock, conn) = judged(2.0);
        let k = key("PRODUCT#a", "META");
        for _ in 0..10 {
            for (op, body) in [
                ("GetItem", json!({ "TableName": TABLE, "Key": k })),
                (
                    "BatchGetItem",
                    json!({ "RequestItems": { TABLE: { "Keys": [k] } } }),
                ),
                (
                    "Query",
                    json!({ "TableName": TABLE, "KeyConditionExpression": "pk = :p" }),
                ),
                (
                    "TransactGetItems",
                    json!({ "TransactItems": [{ "Get": { "TableName": TABLE, "Key": k } }] }),
                ),
            ] {
                assert_eq!(status_of(&conn, request(op, body)).await, 200);
            }
            let mut sqs = HttpRequest::new(SdkBody::from(r#"{"QueueUrl":"q"}"#));
            sqs.headers_mut()
                .insert("x-amz-target", "AmazonSQS.SendMessage");
            assert_eq!(status_of(&conn, sqs).await, 200);
            let mut plain = HttpRequest::new(SdkBody::from("{}"));
            plain.set_uri("http://169.254.169.254/latest").unwrap();
            assert_eq!(status_of(&conn, plain).await, 200);
        }
        assert_eq!(mock.calls(), 60);
        assert_eq!(model.stats(), CapacityStats::default());
        // The item's budget is untouched.
        assert_eq!(status_of(&conn, update("PRODUCT#a", "META")).await, 200);
        assert_eq!(status_of(&conn, update("PRODUCT#a", "META")).await, 200);
        assert_eq!(status_of(&conn, update("PRODUCT#a", "META")).await, 400);
    }

    #[tokio::test]
    async fn items_sharing_a_partition_key_share_its_budget_and_others_do_not() {
        let (model, _clock, mock, conn) = judged(4.0);
        // Two items of one partition: 4 units between them, though each item has 4 of its own.
        let (s0, s1) = (("PRODUCT#a", "SHARD#000"), ("PRODUCT#a", "SHARD#001"));
        let mut first_four = Vec::new();
        for (pk, sk) in [s0, s1, s0, s1] {
            first_four.push(status_of(&conn, update(pk, sk)).await);
        }
        assert_eq!(first_four, [200; 4]);
        let (status, body) = answer(&conn, update("PRODUCT#a", "SHARD#001")).await;
        assert_eq!((status, error_type(&body)), (400, "ThrottlingException"));
        // A transaction touching the partition is refused on that item only.
        let (status, body) = answer(
            &conn,
            transact(&[("ORDER#1", "ORDER"), ("PRODUCT#a", "META")]),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(reason_codes(&body), ["None", "ThrottlingError"]);
        // Two items with partition keys of their own: 4 units each, all used.
        for _ in 0..4 {
            assert_eq!(
                status_of(&conn, update("PRODUCT#b#SHARD#000", "SHARD#000")).await,
                200
            );
            assert_eq!(
                status_of(&conn, update("PRODUCT#b#SHARD#001", "SHARD#001")).await,
                200
            );
        }
        assert_eq!(
            status_of(&conn, update("PRODUCT#b#SHARD#001", "SHARD#001")).await,
            400
        );
        assert_eq!(mock.calls(), 12);
        assert_eq!(model.stats().throttles, 3);
        // A key without the partition attribute is a partition of its own.
        let model = CapacityModel::with_clock(2.0, Clock::Manual(Arc::default()))
            .with_key_attributes(&["id"]);
        let conn = Mock::default().connector(&model);
        for (pk, sk) in [("x", "1"), ("x", "2"), ("x", "1"), ("x", "2")] {
            assert_eq!(status_of(&conn, update(pk, sk)).await, 200);
        }
    }

    #[tokio::test]
    async fn put_and_update_of_one_item_share_its_budget() {
        let (model, _clock) = manual(3.0);
        let conn = Mock::default().connector(&model);
        // Key attribute order and non-key attributes do not matter.
        let put_a = request(
            "PutItem",
            json!({ "TableName": TABLE, "Item": {
                "sk": { "S": "ORDER" }, "owner": { "S": "u1" }, "pk": { "S": "ORDER#1" } } }),
        );
        let put_b = request(
            "PutItem",
            json!({ "TableName": TABLE, "Item": {
                "pk": { "S": "ORDER#1" }, "sk": { "S": "ORDER" }, "owner": { "S": "u2" } } }),
        );
        let delete = request(
            "DeleteItem",
            json!({ "TableName": TABLE, "Key": { "sk": { "S": "ORDER" }, "pk": { "S": "ORDER#1" } } }),
        );
        assert_eq!(status_of(&conn, put_a).await, 200);
        assert_eq!(status_of(&conn, put_b).await, 200);
        assert_eq!(status_of(&conn, delete).await, 200);
        assert_eq!(status_of(&conn, update("ORDER#1", "ORDER")).await, 400);
        // Same key in another table is another item.
        let other = request(
            "UpdateItem",
            json!({ "TableName": "other", "Key": key("ORDER#1", "ORDER") }),
        );
        assert_eq!(status_of(&conn, other).await, 200);
    }

    #[tokio::test]
    async fn batch_write_charges_each_item_and_is_refused_whole() {
        let (model, _clock, mock, conn) = judged(2.0);
        let batch = |n: usize| {
            let writes: Vec<Value> = (0..n)
                .map(|i| {
                    let pk = format!("p{i}");
                    if i % 2 == 0 {
                        json!({ "PutRequest": { "Item": key(&pk, "1") } })
                    } else {
                        json!({ "DeleteRequest": { "Key": key(&pk, "1") } })
                    }
                })
                .chain([json!({ "PutRequest": { "Item": key("hot", "1") } })])
                .collect();
            request(
                "BatchWriteItem",
                json!({ "RequestItems": { TABLE: writes } }),
            )
        };
        assert_eq!(status_of(&conn, batch(3)).await, 200);
        assert_eq!(model.stats().write_units_admitted, 4.0);
        assert_eq!(status_of(&conn, batch(1)).await, 200);
        let (status, body) = answer(&conn, batch(1)).await;
        assert_eq!((status, error_type(&body)), (400, "ThrottlingException"));
        assert_eq!(mock.calls(), 2);
        assert_eq!(model.stats().write_units_admitted, 6.0);
        assert_eq!(model.stats().throttles, 1);
    }

    fn sdk_update(pk: &str, sk: &str) -> TransactWriteItem {
        TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name(TABLE)
                    .key("pk", AttributeValue::S(pk.into()))
                    .key("sk", AttributeValue::S(sk.into()))
                    .update_expression("SET v = :v")
                    .expression_attribute_values(":v", AttributeValue::N("1".into()))
                    .build()
                    .expect("valid update"),
            )
            .build()
    }

    fn canceled_codes(
        err: aws_sdk_dynamodb::error::SdkError<TransactWriteItemsError, HttpResponse>,
    ) -> Vec<String> {
        match err.into_service_error() {
            TransactWriteItemsError::TransactionCanceledException(c) => c
                .cancellation_reasons()
                .iter()
                .map(|r| r.code().unwrap_or("").to_owned())
                .collect(),
            other => panic!("expected TransactionCanceledException, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn sdk_decodes_synthetic_transaction_conflicts() {
        let model = CapacityModel::new(1000.0, 1.0);
        let (mock, gate) = Mock::holding("HOLD");
        let client = mock.sdk_client(&model);
        let held = tokio::spawn({
            let client = client.clone();
            async move {
                client
                    .transact_write_items()
                    .transact_items(sdk_update("PRODUCT#x", "SHARD#000"))
                    .transact_items(sdk_update("ORDER#HOLD", "ORDER"))
                    .send()
                    .await
            }
        });
        mock.entered.notified().await;

        let err = client
            .transact_write_items()
            .transact_items(sdk_update("ORDER#2", "ORDER"))
            .transact_items(sdk_update("PRODUCT#x", "SHARD#000"))
            .send()
            .await
            .expect_err("conflict");
        assert_eq!(canceled_codes(err), ["None", "TransactionConflict"]);

        let err = client
            .update_item()
            .table_name(TABLE)
            .key("pk", AttributeValue::S("PRODUCT#x".into()))
            .key("sk", AttributeValue::S("SHARD#000".into()))
            .update_expression("SET v = :v")
            .expression_attribute_values(":v", AttributeValue::N("1".into()))
            .send()
            .await
            .expect_err("conflict");
        assert!(matches!(
            err.into_service_error(),
            UpdateItemError::TransactionConflictException(_)
        ));
        // Conflicts are not retried: one attempt each.
        assert_eq!(model.stats().conflicts, 2);
        assert_eq!(mock.calls(), 1);

        gate.add_permits(1);
        held.await
            .expect("joined")
            .expect("first transaction succeeds");
        transact_one(&client, "PRODUCT#x", "SHARD#000")
            .await
            .expect("free again");
    }

    #[tokio::test]
    async fn sdk_decodes_synthetic_transaction_throttles() {
        let (model, _clock, mock, client) = judged_by_sdk(4.0);
        for _ in 0..2 {
            transact_one(&client, "PRODUCT#x", "SHARD#000")
                .await
                .expect("within budget");
        }
        let err = client
            .transact_write_items()
            .transact_items(sdk_update("ORDER#1", "ORDER"))
            .transact_items(
                TransactWriteItem::builder()
                    .condition_check(
                        ConditionCheck::builder()
                            .table_name(TABLE)
                            .key("pk", AttributeValue::S("PRODUCT#x".into()))
                            .key("sk", AttributeValue::S("SHARD#000".into()))
                            .condition_expression("attribute_exists(pk)")
                            .build()
                            .expect("valid check"),
                    )
                    .build(),
            )
            .send()
            .await
            .expect_err("throttled");
        assert_eq!(canceled_codes(err), ["None", "ThrottlingError"]);
        // TransactionCanceledException is not retried.
        assert_eq!(mock.calls(), 2);
        assert_eq!(model.stats().throttles, 1);
        assert_eq!(model.stats().write_units_admitted, 4.0);
    }

    #[tokio::test]
    async fn sdk_retries_single_item_throttles_then_fails() {
        let (model, clock, mock, client) = judged_by_sdk(2.0);
        let put = || {
            client
                .put_item()
                .table_name(TABLE)
                .item("pk", AttributeValue::S("PRODUCT#x".into()))
                .item("sk", AttributeValue::S("SHARD#000".into()))
                .item("available", AttributeValue::N("5".into()))
                .send()
        };
        put().await.expect("within budget");
        put().await.expect("within budget");
        let err = put().await.expect_err("throttled");
        match err.into_service_error() {
            PutItemError::ThrottlingException(t) => {
                assert_eq!(
                    t.throttling_reasons()[0].reason(),
                    Some("TableWriteKeyRangeThroughputExceeded")
                );
            }
            other => panic!("expected ThrottlingException, got {other:?}"),
        }
        // Three attempts, none sent.
        assert_eq!(model.stats().throttles, 3);
        assert_eq!(mock.calls(), 2);
        // Once the budget refills, a retry gets through.
        advance(&clock, Duration::from_millis(500));
        put().await.expect("refilled");
        assert_eq!(model.stats().write_units_admitted, 3.0);
    }
}
