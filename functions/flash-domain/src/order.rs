//! The order state machine. Status changes only through [`transition`], a pure function that
//! the table and property tests exercise for every (status, event) pair; the storage adapter
//! turns its answer into one conditional write on `status = :from`.

use crate::clock::Millis;
use crate::ids::{OrderId, Quantity, Sku, UserId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Accepted by the API, waiting for the processor to decide.
    Queued,
    Rejected,
    /// Stock deducted, awaiting payment.
    Pending,
    Paid,
    Shipped,
    Completed,
    Canceled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 7] = [
        Self::Queued,
        Self::Rejected,
        Self::Pending,
        Self::Paid,
        Self::Shipped,
        Self::Completed,
        Self::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Rejected => "rejected",
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Completed => "completed",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Rejected | Self::Completed | Self::Canceled)
    }

    /// Whether an order in this status holds units of stock.
    pub fn holds_stock(self) -> bool {
        matches!(
            self,
            Self::Pending | Self::Paid | Self::Shipped | Self::Completed
        )
    }

    /// Whether an order in this status still counts against its buyer's per-user limit
    /// (queued, or holding stock).
    pub fn admission_live(self) -> bool {
        self == Self::Queued || self.holds_stock()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    SoldOut,
    PurchaseLimit,
    SaleNotOpen,
    PaymentTimeout,
    BuyerCanceled,
    Refunded,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Self::SoldOut,
        Self::PurchaseLimit,
        Self::SaleNotOpen,
        Self::PaymentTimeout,
        Self::BuyerCanceled,
        Self::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SoldOut => "sold_out",
            Self::PurchaseLimit => "purchase_limit",
            Self::SaleNotOpen => "sale_not_open",
            Self::PaymentTimeout => "payment_timeout",
            Self::BuyerCanceled => "buyer_canceled",
            Self::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The actions callers can take through `POST /orders/{id}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Pay,
    Cancel,
    Refund,
    Ship,
    Confirm,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Self::Pay,
        Self::Cancel,
        Self::Refund,
        Self::Ship,
        Self::Confirm,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pay" => Self::Pay,
            "cancel" => Self::Cancel,
            "refund" => Self::Refund,
            "ship" => Self::Ship,
            "confirm" => Self::Confirm,
            _ => return None,
        })
    }

    /// Shipping is the merchant's job; everything else the buyer does to their own order.
    /// Admins may do anything.
    pub fn allowed(self, is_owner: bool, is_admin: bool) -> bool {
        is_admin || (is_owner && self != Self::Ship)
    }

    pub fn event(self) -> Event {
        match self {
            Self::Pay => Event::Pay,
            Self::Cancel => Event::Cancel,
            Self::Refund => Event::Refund,
            Self::Ship => Event::Ship,
            Self::Confirm => Event::Confirm,
        }
    }
}

/// Everything that can happen to an order, from the processor, a caller or the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    Accept,
    Reject(Reason),
    Pay,
    Cancel,
    Refund,
    Ship,
    Confirm,
    PaymentTimeout,
}

impl Event {
    pub const ALL: [Event; 12] = [
        Self::Accept,
        Self::Reject(Reason::SoldOut),
        Self::Reject(Reason::PurchaseLimit),
        Self::Reject(Reason::SaleNotOpen),
        Self::Pay,
        Self::Cancel,
        Self::Refund,
        Self::Ship,
        Self::Confirm,
        Self::PaymentTimeout,
        // Rejections with reasons that only cancellations carry are refused.
        Self::Reject(Reason::Refunded),
        Self::Reject(Reason::BuyerCanceled),
    ];
}

/// An allowed status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: OrderStatus,
    pub to: OrderStatus,
    pub reason: Option<Reason>,
    /// The change gives the order's units back to stock, in the same write.
    pub restores_stock: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The event already took effect: answering it again is idempotent, not an error.
    #[error("already applied")]
    AlreadyApplied,
    #[error("not allowed from status {0:?}")]
    NotAllowed(OrderStatus),
}

/// The whole state machine. `reason` is the order's current reason, needed to tell a repeated
/// cancel (already applied) from a cancel after a refund (not allowed).
pub fn transition(
    from: OrderStatus,
    reason: Option<Reason>,
    event: Event,
) -> Result<Transition, TransitionError> {
    use OrderStatus::*;
    let (to, new_reason, restores) = match (from, event) {
        (Queued, Event::Accept) => (Pending, None, false),
        (
            Queued,
            Event::Reject(r @ (Reason::SoldOut | Reason::PurchaseLimit | Reason::SaleNotOpen)),
        ) => (Rejected, Some(r), false),
        (Pending, Event::Pay) => (Paid, None, false),
        (Pending, Event::Cancel) => (Canceled, Some(Reason::BuyerCanceled), true),
        (Pending, Event::PaymentTimeout) => (Canceled, Some(Reason::PaymentTimeout), true),
        (Paid, Event::Refund) => (Canceled, Some(Reason::Refunded), true),
        (Paid, Event::Ship) => (Shipped, None, false),
        (Shipped, Event::Confirm) => (Completed, None, false),
        (status, event) => {
            let applied = match event {
                Event::Accept => status != Queued && status != Rejected,
                Event::Reject(r) => status == Rejected && reason == Some(r),
                Event::Pay => status == Paid,
                Event::Cancel => status == Canceled && reason == Some(Reason::BuyerCanceled),
                Event::PaymentTimeout => {
                    status == Canceled && reason == Some(Reason::PaymentTimeout)
                }
                Event::Refund => status == Canceled && reason == Some(Reason::Refunded),
                Event::Ship => status == Shipped,
                Event::Confirm => status == Completed,
            };
            return Err(if applied {
                TransitionError::AlreadyApplied
            } else {
                TransitionError::NotAllowed(status)
            });
        }
    };
    Ok(Transition {
        from,
        to,
        reason: new_reason,
        restores_stock: restores,
    })
}

/// One unit range taken from one stock shard, kept on the order so a cancel knows what it
/// gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardTake {
    pub shard: u32,
    pub units: u32,
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub owner: UserId,
    pub sku: Sku,
    pub quantity: Quantity,
    pub status: OrderStatus,
    pub reason: Option<Reason>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// When a `pending` order's payment window closes.
    pub expires_at: Option<Millis>,
    /// Fingerprint of the request body that created it (idempotency).
    pub fingerprint: String,
    /// Where its units came from; empty until accepted.
    pub takes: Vec<ShardTake>,
    /// Its units were added to the buyer's purchase counter (the product had a limit).
    pub counted: bool,
}

impl Order {
    /// Applies `t` in memory, as the storage write did.
    pub fn apply(&mut self, t: &Transition, now: Millis) {
        self.status = t.to;
        self.reason = t.reason;
        self.updated_at = now;
        if t.to != OrderStatus::Pending {
            self.expires_at = None;
        }
    }
}

/// A digest of an order request's meaning, not its bytes: the order's `fingerprint`. Key
/// order and whitespace do not matter, so a client that re-serialises its retry is still
/// recognised as the same request (and a reused key with another body is not).
pub fn request_fingerprint(sku: &Sku, quantity: Quantity) -> String {
    use sha2::{Digest, Sha256};
    let canonical = format!("sku={sku}\nquantity={}", quantity.get());
    hex::encode(&Sha256::digest(canonical.as_bytes())[..16])
}

/// The SQS message body `place-order` sends and `process-orders` reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderMessage {
    pub order_id: OrderId,
    pub sku: Sku,
    pub quantity: Quantity,
    pub user_id: UserId,
}

impl OrderMessage {
    pub fn of(order: &Order) -> Self {
        Self {
            order_id: order.id.clone(),
            sku: order.sku.clone(),
            quantity: order.quantity,
            user_id: order.owner.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use OrderStatus::*;

    /// Every allowed (status, event) pair and where it leads; everything else is refused.
    const ALLOWED: &[(OrderStatus, Event, OrderStatus, bool)] = &[
        (Queued, Event::Accept, Pending, false),
        (Queued, Event::Reject(Reason::SoldOut), Rejected, false),
        (
            Queued,
            Event::Reject(Reason::PurchaseLimit),
            Rejected,
            false,
        ),
        (Queued, Event::Reject(Reason::SaleNotOpen), Rejected, false),
        (Pending, Event::Pay, Paid, false),
        (Pending, Event::Cancel, Canceled, true),
        (Pending, Event::PaymentTimeout, Canceled, true),
        (Paid, Event::Refund, Canceled, true),
        (Paid, Event::Ship, Shipped, false),
        (Shipped, Event::Confirm, Completed, false),
    ];

    #[test]
    fn every_status_event_pair_matches_the_table() {
        for from in OrderStatus::ALL {
            for reason in std::iter::once(None).chain(Reason::ALL.map(Some)) {
                for event in Event::ALL {
                    let got = transition(from, reason, event);
                    match ALLOWED
                        .iter()
                        .find(|(f, e, _, _)| *f == from && *e == event)
                    {
                        Some(&(_, _, to, restores)) => {
                            let t = got.unwrap_or_else(|e| panic!("{from:?} {event:?}: {e}"));
                            assert_eq!(
                                (t.to, t.restores_stock),
                                (to, restores),
                                "{from:?} {event:?}"
                            );
                        }
                        None => assert!(got.is_err(), "{from:?} {reason:?} {event:?} allowed"),
                    }
                }
            }
        }
    }

    #[test]
    fn repeated_actions_are_already_applied_not_errors() {
        assert_eq!(
            transition(Paid, None, Event::Pay),
            Err(TransitionError::AlreadyApplied)
        );
        assert_eq!(
            transition(Canceled, Some(Reason::BuyerCanceled), Event::Cancel),
            Err(TransitionError::AlreadyApplied)
        );
        assert_eq!(
            transition(Canceled, Some(Reason::Refunded), Event::Cancel),
            Err(TransitionError::NotAllowed(Canceled))
        );
        assert_eq!(
            transition(Canceled, Some(Reason::PaymentTimeout), Event::Pay),
            Err(TransitionError::NotAllowed(Canceled))
        );
        assert_eq!(
            transition(Pending, None, Event::Accept),
            Err(TransitionError::AlreadyApplied)
        );
    }

    #[test]
    fn only_admins_ship_and_only_owners_act_otherwise() {
        for a in Action::ALL {
            assert!(a.allowed(false, true));
            assert!(!a.allowed(false, false));
            assert_eq!(a.allowed(true, false), a != Action::Ship);
        }
    }

    fn any_event() -> impl Strategy<Value = Event> {
        prop::sample::select(Event::ALL.to_vec())
    }

    proptest! {
        /// Any sequence of events: final states never change, stock is restored at most once
        /// and only after it was taken, and units are held exactly while the status says so.
        #[test]
        fn any_event_sequence_keeps_the_order_invariants(events in prop::collection::vec(any_event(), 0..40)) {
            let (mut status, mut reason) = (Queued, None);
            let (mut taken, mut restored) = (0, 0);
            for e in events {
                match transition(status, reason, e) {
                    Ok(t) => {
                        prop_assert!(!status.is_final(), "{status:?} changed");
                        prop_assert_eq!(t.from, status);
                        if t.from == Queued && t.to == Pending { taken += 1; }
                        if t.restores_stock { restored += 1; }
                        status = t.to;
                        reason = t.reason;
                    }
                    Err(TransitionError::AlreadyApplied) => {}
                    Err(TransitionError::NotAllowed(s)) => prop_assert_eq!(s, status),
                }
                prop_assert!(taken <= 1 && restored <= taken);
                prop_assert_eq!(status.holds_stock(), taken - restored == 1);
                prop_assert_eq!(reason.is_some(), matches!(status, Rejected | Canceled));
            }
        }
    }
}
