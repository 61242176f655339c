//! The fault-injection suite's vocabulary, shared by its two parts
//! (`tests/tests/faults_in_memory.rs` over the fakes, `tests/tests/faults_sdk.rs` over the
//! local stack with SDK faults): the run's seed, the fault kinds it must cover and how coverage
//! is counted, and the buyers' scripts and the API they run against ([`Api`]).

use crate::failpoint::{Effect, Fired, Phase, Tracer};
use crate::fixtures::sqs_event;
use crate::sqs_sim::Delivery;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use flash_domain::order::{transition, Event};
use flash_domain::{OrderId, OrderStatus, Reason};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Mutex, MutexGuard};

pub const DEFAULT_SEED: u64 = 20_261_124;
pub const FAKE_SCENARIOS: usize = 240;
pub const SDK_SCENARIOS: usize = 30;
/// `maxReceiveCount` of the orders queue's redrive policy in template.yaml.
pub const MAX_RECEIVES: u32 = 5;
/// Failpoints a queue consumer may fire in one scenario: fewer than `MAX_RECEIVES`, so a
/// valid message never fails its way into the DLQ and every accepted order must be decided.
pub const MAX_FAULTS: usize = 4;
/// Failpoints each API function may fire in one scenario.
pub const MAX_API_FAULTS: usize = 6;
/// Tries a caller makes (on `503` or no answer) before the suite calls it a failure. Each
/// failed try spends a failpoint, so this is never reached unless something is wrong.
pub const TRIES: usize = MAX_API_FAULTS + 2;
pub const API_FUNCTIONS: [&str; 4] = ["place-order", "advance-order", "get-order", "products"];
/// Polls of an order before the suite says it was never decided.
pub const POLLS: usize = 50_000;

pub fn run_seed() -> u64 {
    match std::env::var("FAULT_SEED") {
        Ok(s) if !s.trim().is_empty() => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).map_err(|e| e.to_string()),
                None => s.parse::<u64>().map_err(|e| e.to_string()),
            };
            parsed.unwrap_or_else(|e| panic!("FAULT_SEED={s:?} is not a number: {e}"))
        }
        _ => DEFAULT_SEED,
    }
}

/// A scenario's own seed, from the run's (splitmix64).
pub fn mix(seed: u64, part: u64, i: usize) -> u64 {
    let mut z = seed ^ part.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes past the test harness's capture, so `make test` always shows the seed and what ran.
pub fn announce(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Stack for a fault suite's threads. A debug build polls each scenario (every function's
/// handler inside, under failpoints and SDK fault layers) through many frames, and how deep
/// depends on which faults and races a run meets: the test harness's 2 MiB is not always
/// enough.
pub const SUITE_STACK_BYTES: usize = 64 << 20;

/// Runs `suite` on a thread of its own with [`SUITE_STACK_BYTES`] of stack; its panic, if any,
/// is the caller's.
pub fn on_a_deep_stack(suite: impl FnOnce() + Send + 'static) {
    let thread = std::thread::Builder::new()
        .name("fault-suite".into())
        .stack_size(SUITE_STACK_BYTES)
        .spawn(suite)
        .expect("a thread for the suite");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// The SQS event a consumer gets for `batch`.
pub fn delivered(batch: &[Delivery]) -> SqsEvent {
    sqs_event(
        &batch
            .iter()
            .map(|d| (d.message_id.clone(), d.body.clone()))
            .collect::<Vec<_>>(),
    )
}

pub fn failed_ids(resp: &SqsBatchResponse) -> HashSet<String> {
    resp.batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

/// Whether an order shown as `seen` can still end as `end` (a `200` answered with `seen`
/// must not be contradicted by where the order ended).
pub fn reachable(seen: OrderStatus, end: OrderStatus) -> bool {
    let mut todo = vec![(seen, None::<Reason>)];
    let mut done = HashSet::new();
    while let Some((s, r)) = todo.pop() {
        if s == end {
            return true;
        }
        if !done.insert(s) {
            continue;
        }
        for e in Event::ALL {
            if let Ok(t) = transition(s, r, e) {
                todo.push((t.to, t.reason));
            }
        }
    }
    false
}

/// The event an action's `200` says happened (at some point, by this call or an earlier one).
pub fn event_of(action: &str) -> Event {
    match action {
        "pay" => Event::Pay,
        "cancel" => Event::Cancel,
        "refund" => Event::Refund,
        "ship" => Event::Ship,
        _ => Event::Confirm,
    }
}

// --- What the suite covers --------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    DuplicateDelivery,
    ConcurrentDuplicateDelivery,
    ConcurrentDuplicateRequest,
    KeyReusedWithAnotherBody,
    FailpointError,
    FailpointCrash,
    PoisonInBatchOfTen,
    CancelRacingProcessor,
    DoubleCancel,
    CancelVsShip,
    RefundVsShip,
    PayVsCancel,
    DoubleRefund,
    PayRacingTimeout,
    CancelRacingTimeout,
    Restock,
    DlqRedriveLongAfter,
    LateRedelivery,
    LateReplay,
    TimeoutsAfterTheSale,
}

impl Kind {
    pub const ALL: [Kind; 20] = [
        Self::DuplicateDelivery,
        Self::ConcurrentDuplicateDelivery,
        Self::ConcurrentDuplicateRequest,
        Self::KeyReusedWithAnotherBody,
        Self::FailpointError,
        Self::FailpointCrash,
        Self::PoisonInBatchOfTen,
        Self::CancelRacingProcessor,
        Self::DoubleCancel,
        Self::CancelVsShip,
        Self::RefundVsShip,
        Self::PayVsCancel,
        Self::DoubleRefund,
        Self::PayRacingTimeout,
        Self::CancelRacingTimeout,
        Self::Restock,
        Self::DlqRedriveLongAfter,
        Self::LateRedelivery,
        Self::LateReplay,
        Self::TimeoutsAfterTheSale,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::DuplicateDelivery => "duplicate delivery xN",
            Self::ConcurrentDuplicateDelivery => "concurrent duplicate deliveries of one batch",
            Self::ConcurrentDuplicateRequest => "concurrent duplicate requests (one key)",
            Self::KeyReusedWithAnotherBody => "key reused with another body (422)",
            Self::FailpointError => "failpoint before/after a call: error",
            Self::FailpointCrash => "failpoint before/after a call: crash",
            Self::PoisonInBatchOfTen => "poison message in a batch of 10",
            Self::CancelRacingProcessor => "cancel racing the processor",
            Self::DoubleCancel => "double cancel",
            Self::CancelVsShip => "cancel vs pay+ship",
            Self::RefundVsShip => "cancel (refund) of a paid order vs ship",
            Self::PayVsCancel => "pay vs cancel",
            Self::DoubleRefund => "double refund",
            Self::PayRacingTimeout => "pay racing the payment timeout",
            Self::CancelRacingTimeout => "cancel racing the payment timeout",
            Self::Restock => "stock added during the sale",
            Self::DlqRedriveLongAfter => "message redriven from the DLQ long after the fact",
            Self::LateRedelivery => "decided orders' messages redelivered long after",
            Self::LateReplay => "a request replayed after its order was decided",
            Self::TimeoutsAfterTheSale => "payment timeouts (duplicated) after the sale",
        }
    }
}

/// What the whole run covered: every (function, call) seen, and the failpoints fired.
#[derive(Default)]
pub struct Coverage {
    pub steps: BTreeSet<(&'static str, &'static str)>,
    pub fired: BTreeSet<Fired>,
    pub fired_total: usize,
    pub kinds: BTreeMap<Kind, usize>,
}

pub const MODES: [(Phase, Effect); 4] = [
    (Phase::Before, Effect::Error),
    (Phase::After, Effect::Error),
    (Phase::Before, Effect::Crash),
    (Phase::After, Effect::Crash),
];

pub type Target = (&'static str, &'static str, Phase, Effect);

impl Coverage {
    /// (function, call, phase, effect) not yet fired, for every call seen so far.
    pub fn missing(&self) -> Vec<Target> {
        let mut out = Vec::new();
        for &(f, op) in &self.steps {
            for (phase, effect) in MODES {
                let fired = Fired {
                    function: f,
                    op,
                    phase,
                    effect,
                };
                if !self.fired.contains(&fired) {
                    out.push((f, op, phase, effect));
                }
            }
        }
        out
    }

    pub fn absorb(&mut self, tracer: &Tracer, kinds: &BTreeMap<Kind, usize>) {
        self.steps.extend(tracer.steps());
        let fired = tracer.fired();
        self.fired_total += fired.len();
        for f in &fired {
            let k = match f.effect {
                Effect::Error => Kind::FailpointError,
                Effect::Crash => Kind::FailpointCrash,
            };
            *self.kinds.entry(k).or_default() += 1;
        }
        self.fired.extend(fired);
        for (k, n) in kinds {
            *self.kinds.entry(*k).or_default() += n;
        }
    }
}

// --- The in-memory world ---------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    Idle,
    Pay,
    PayShipConfirm,
    Cancel,
    DoubleCancel,
    CancelRacingProcessor,
    PayRefund,
    PayDoubleRefund,
    RefundVsShip,
    CancelVsPayShip,
    PayVsCancel,
    PayVsTimeout,
    CancelVsTimeout,
}

pub const SCRIPTS: [Script; 13] = [
    Script::Idle,
    Script::Pay,
    Script::PayShipConfirm,
    Script::Cancel,
    Script::DoubleCancel,
    Script::CancelRacingProcessor,
    Script::PayRefund,
    Script::PayDoubleRefund,
    Script::RefundVsShip,
    Script::CancelVsPayShip,
    Script::PayVsCancel,
    Script::PayVsTimeout,
    Script::CancelVsTimeout,
];

#[derive(Debug, Clone)]
pub struct Buyer {
    pub user: String,
    pub key: String,
    pub quantity: u32,
    /// Sends its request twice at once.
    pub twice: bool,
    /// Then reuses its key with another body.
    pub reuse: bool,
    /// Replays its request once its script is done.
    pub replay: bool,
    pub script: Script,
}

/// A caller's answer to an action.
#[derive(Debug, Clone)]
pub struct Answer {
    pub order: OrderId,
    pub action: &'static str,
    pub status: u16,
    pub shown: Option<OrderStatus>,
}

impl Answer {
    /// `action` on `order` answered `status` with `body`: the order's status it shows, as the
    /// order (`200`) or as the error's `status` (`409`).
    pub fn of(order: &OrderId, action: &'static str, status: u16, body: &Value) -> Self {
        let shown = body["status"]
            .as_str()
            .or(body["error"]["status"].as_str())
            .and_then(OrderStatus::parse);
        Self {
            order: order.clone(),
            action,
            status,
            shown,
        }
    }
}

/// What a buyer's script needs from the world it runs in.
#[allow(async_fn_in_trait)] // used by this crate's test binaries only
pub trait Api {
    fn fail(&self, what: impl std::fmt::Display) -> !;
    fn tally(&self, k: Kind);
    async fn act(&self, who: &str, admin: bool, id: &OrderId, action: &'static str) -> Answer;
    async fn wait_decided(&self, who: &str, id: &OrderId) -> OrderStatus;
    /// The payment window closes (`closes_in` ms from now) while the buyer takes `action`.
    async fn race_timeout(&self, who: &str, id: &OrderId, action: &'static str, closes_in: i64);
    /// Lets the others run a little.
    async fn pause(&self);

    /// The buyer sends `first` and `second` on their order at once.
    async fn both(&self, who: &str, id: &OrderId, first: &'static str, second: &'static str) {
        futures::join!(
            self.act(who, false, id, first),
            self.act(who, false, id, second)
        );
    }
}

/// A buyer's actions on their accepted order.
pub async fn script<A: Api>(api: &A, b: &Buyer, id: &OrderId) {
    let who = b.user.as_str();
    if b.script == Script::CancelRacingProcessor {
        api.tally(Kind::CancelRacingProcessor);
        for _ in 0..POLLS {
            let a = api.act(who, false, id, "cancel").await;
            if a.status == 409 && a.shown == Some(OrderStatus::Queued) {
                api.pause().await;
                continue;
            }
            return;
        }
        api.fail(format!("order {id} stayed queued"));
    }
    if b.script == Script::Idle || api.wait_decided(who, id).await != OrderStatus::Pending {
        return;
    }
    match b.script {
        Script::Pay => {
            api.act(who, false, id, "pay").await;
        }
        Script::PayShipConfirm => {
            api.act(who, false, id, "pay").await;
            api.act("admin-1", true, id, "ship").await;
            api.act(who, false, id, "confirm").await;
        }
        Script::Cancel => {
            api.act(who, false, id, "cancel").await;
        }
        Script::DoubleCancel => {
            api.tally(Kind::DoubleCancel);
            api.both(who, id, "cancel", "cancel").await;
        }
        Script::PayRefund => {
            api.act(who, false, id, "pay").await;
            api.act(who, false, id, "refund").await;
        }
        Script::PayDoubleRefund => {
            api.tally(Kind::DoubleRefund);
            api.act(who, false, id, "pay").await;
            api.both(who, id, "refund", "refund").await;
        }
        Script::RefundVsShip => {
            api.tally(Kind::RefundVsShip);
            api.act(who, false, id, "pay").await;
            futures::join!(
                api.act(who, false, id, "refund"),
                api.act("admin-1", true, id, "ship")
            );
        }
        Script::CancelVsPayShip => {
            api.tally(Kind::CancelVsShip);
            futures::join!(api.act(who, false, id, "cancel"), async {
                api.act(who, false, id, "pay").await;
                api.act("admin-1", true, id, "ship").await;
            });
        }
        Script::PayVsCancel => {
            api.tally(Kind::PayVsCancel);
            api.both(who, id, "pay", "cancel").await;
        }
        Script::PayVsTimeout => {
            api.tally(Kind::PayRacingTimeout);
            // The window closes now, give or take a millisecond.
            let closes_in = i64::from(id.as_str().as_bytes()[0] % 3) - 1;
            api.race_timeout(who, id, "pay", closes_in).await;
        }
        Script::CancelVsTimeout => {
            api.tally(Kind::CancelRacingTimeout);
            api.race_timeout(who, id, "cancel", -1).await;
        }
        Script::Idle | Script::CancelRacingProcessor => {}
    }
}
