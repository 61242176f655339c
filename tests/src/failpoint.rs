//! Failpoints at every step of every function. [`Faulty`] wraps a [`Store`] or a [`Queue`] for
//! one invocation of one function and can make one of its calls fail: *before* it takes effect
//! (nothing written, the caller sees an error) or *after* (written, but the caller sees an
//! error, as when the reply is lost), either as an error the function handles or as a crash
//! (that call and every later one fail, and the driver throws the function's answer away, as
//! when a Lambda dies mid-invocation). It works over the in-memory store and DynamoDB alike.
//!
//! A [`Tracer`], shared by every invocation of a scenario, records what the wrapped calls did
//! (the ledger the invariant checker replays: one deduction, at most one restore and one
//! payment per order), which failpoints fired, and which (function, call) pairs exist, so the
//! suite can prove it put a failpoint at every step. It also interleaves concurrent
//! invocations: before each call it yields a seeded number of times, so on a single-threaded
//! runtime every run of a seed takes the same interleaving, and different seeds take others.

use crate::fixtures::Req;
use crate::response::parts;
use crate::watched::{lock, Interleave, Saw, Watch, Watched};
use advance_order::AdvanceOrder;
use flash_domain::clock::Millis;
use flash_domain::order::Transition;
use flash_domain::ports::{PortError, PortResult, Store, Unlimited};
use flash_domain::{OrderId, Reason};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Nothing happened; the caller sees an error.
    Before,
    /// The call took effect; the caller sees an error.
    After,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Effect {
    /// The call fails; the function carries on with its own error handling.
    Error,
    /// The function dies there: this call and every later one fail, its answer is lost.
    Crash,
}

/// Which call of an invocation a failpoint hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// The n-th call (from 0), whatever it is.
    Step(usize),
    /// The first call of any of these operations.
    First(Vec<&'static str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failpoint {
    pub at: At,
    pub phase: Phase,
    pub effect: Effect,
}

/// A failpoint that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fired {
    pub function: &'static str,
    pub op: &'static str,
    pub phase: Phase,
    pub effect: Effect,
}

/// A change a wrapped call reported as made (a failpoint after it does not undo it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Created(OrderId),
    /// Accepted by a group commit: its units left the stock.
    Deducted(OrderId, u32),
    Rejected(OrderId, Reason),
    /// The transition, when it was written, and the payment deadline of the order as read.
    Advanced(OrderId, Transition, Millis, Option<Millis>),
}

impl Entry {
    pub fn order(&self) -> &OrderId {
        match self {
            Self::Created(id)
            | Self::Deducted(id, _)
            | Self::Rejected(id, _)
            | Self::Advanced(id, ..) => id,
        }
    }
}

#[derive(Default)]
struct TracerInner {
    /// Failpoints that may still fire, per function (unlimited when absent).
    budgets: Mutex<HashMap<&'static str, usize>>,
    ledger: Mutex<Vec<Entry>>,
    fired: Mutex<Vec<Fired>>,
    steps: Mutex<BTreeSet<(&'static str, &'static str)>>,
    interleave: Interleave,
}

/// What one scenario's wrapped calls did. Clones share one record.
#[derive(Clone, Default)]
pub struct Tracer {
    inner: Arc<TracerInner>,
}

impl Tracer {
    /// A tracer that yields before each call as `seed` decides (0 to 3 times).
    pub fn interleaving(seed: u64) -> Self {
        Self {
            inner: Arc::new(TracerInner {
                interleave: Interleave::seeded(seed),
                ..TracerInner::default()
            }),
        }
    }

    /// From now on at most `n` failpoints fire in `function` (armed ones beyond that stay
    /// silent), so a scenario can bound how often one message fails or one caller retries.
    pub fn set_budget(&self, function: &'static str, n: usize) {
        lock(&self.inner.budgets).insert(function, n);
    }

    /// Failpoints that may still fire in `function`.
    pub fn budget(&self, function: &'static str) -> usize {
        lock(&self.inner.budgets)
            .get(function)
            .copied()
            .unwrap_or(usize::MAX)
    }

    /// Spends one failpoint of `function`'s budget; `false` when none is left.
    fn spend(&self, function: &'static str) -> bool {
        match lock(&self.inner.budgets).get_mut(function) {
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        }
    }

    pub fn ledger(&self) -> Vec<Entry> {
        lock(&self.inner.ledger).clone()
    }

    pub fn fired(&self) -> Vec<Fired> {
        lock(&self.inner.fired).clone()
    }

    /// Every (function, operation) pair called so far.
    pub fn steps(&self) -> BTreeSet<(&'static str, &'static str)> {
        lock(&self.inner.steps).clone()
    }

    fn record(&self, e: Entry) {
        lock(&self.inner.ledger).push(e);
    }

    /// A new invocation of `function`, with `point` armed (or none).
    pub fn invocation(&self, function: &'static str, point: Option<Failpoint>) -> Invocation {
        Invocation {
            inner: Arc::new(InvocationInner {
                tracer: self.clone(),
                function,
                point,
                steps: AtomicUsize::new(0),
                crashed: AtomicBool::new(false),
                fired: AtomicBool::new(false),
            }),
        }
    }
}

struct InvocationInner {
    tracer: Tracer,
    function: &'static str,
    point: Option<Failpoint>,
    steps: AtomicUsize,
    crashed: AtomicBool,
    fired: AtomicBool,
}

/// One run of one function. Wrap each port it gets with [`Invocation::wrap`]; afterwards ask
/// whether it crashed.
#[derive(Clone)]
pub struct Invocation {
    inner: Arc<InvocationInner>,
}

impl Invocation {
    pub fn wrap<T>(&self, port: T) -> Faulty<T> {
        Watched::new(port, self.clone())
    }

    /// `who` asks `advance-order` for `action` on `id`, in this invocation over `store` (with no
    /// rate limit): the answer's status and body.
    pub async fn advance<S: Store>(
        &self,
        store: S,
        who: &str,
        admin: bool,
        id: &OrderId,
        action: &str,
    ) -> (u16, serde_json::Value) {
        let h = AdvanceOrder::new(self.wrap(store)).with_rate_limit(self.wrap(Unlimited));
        let resp = h
            .handle(Req::advance(who, admin, id.as_str(), action).build())
            .await;
        parts(resp)
    }

    /// The function died at a failpoint: its answer never reached anyone.
    pub fn crashed(&self) -> bool {
        self.inner.crashed.load(Ordering::SeqCst)
    }

    pub fn fired(&self) -> bool {
        self.inner.fired.load(Ordering::SeqCst)
    }

    /// Counts the call and says whether the failpoint hits it.
    fn arm(&self, op: &'static str) -> Option<Failpoint> {
        let i = &self.inner;
        lock(&i.tracer.inner.steps).insert((i.function, op));
        let step = i.steps.fetch_add(1, Ordering::SeqCst);
        let point = i.point.as_ref()?;
        let hit = match &point.at {
            At::Step(k) => *k == step,
            At::First(ops) => ops.contains(&op),
        };
        if !hit || i.fired.swap(true, Ordering::SeqCst) {
            return None;
        }
        i.tracer.spend(i.function).then(|| point.clone())
    }

    fn fire(&self, op: &'static str, point: &Failpoint) -> PortError {
        let i = &self.inner;
        lock(&i.tracer.inner.fired).push(Fired {
            function: i.function,
            op,
            phase: point.phase,
            effect: point.effect,
        });
        if point.effect == Effect::Crash {
            i.crashed.store(true, Ordering::SeqCst);
        }
        let when = match point.phase {
            Phase::Before => "before",
            Phase::After => "after",
        };
        PortError::unavailable(op, format!("injected failpoint {when} {op}"))
    }
}

/// A port of one invocation, with its failpoint.
pub type Faulty<T> = Watched<T, Invocation>;

impl Watch for Invocation {
    /// Runs `call` as step `op`: fails it before or after, as the failpoint says.
    async fn step<R: Send>(
        &self,
        op: &'static str,
        call: impl Future<Output = PortResult<R>> + Send,
    ) -> PortResult<R> {
        self.inner.tracer.inner.interleave.step().await;
        if self.crashed() {
            return Err(PortError::unavailable(op, "the function crashed earlier"));
        }
        let point = self.arm(op);
        if let Some(p) = point.as_ref().filter(|p| p.phase == Phase::Before) {
            return Err(self.fire(op, p));
        }
        let result = call.await;
        match point {
            Some(p) => Err(self.fire(op, &p)),
            None => result,
        }
    }

    /// The ledger's changes: an order created, the units of each order a commit accepted, a
    /// rejection, a transition.
    fn saw(&self, what: Saw<'_>) {
        let tracer = &self.inner.tracer;
        match what {
            Saw::Created(order) => tracer.record(Entry::Created(order.id.clone())),
            Saw::Committed(c, Ok(Ok(()))) => {
                for a in &c.accepted {
                    let units = a.takes.iter().map(|t| t.units).sum();
                    tracer.record(Entry::Deducted(a.order_id.clone(), units));
                }
            }
            Saw::Rejected(id, reason) => tracer.record(Entry::Rejected(id.clone(), reason)),
            Saw::Advanced(order, t, now) => {
                tracer.record(Entry::Advanced(order.id.clone(), *t, now, order.expires_at))
            }
            Saw::Shards(_) | Saw::Committed(..) => {}
        }
    }
}
