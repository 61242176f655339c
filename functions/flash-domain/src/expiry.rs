//! Payment timeouts. An accepted (`pending`) order must be paid within its product's payment
//! window; when the window closes unpaid the order becomes `canceled` with reason
//! `payment_timeout` and its units go back to a stock shard.
//!
//! No scan looks for such orders: `process-orders` schedules one delayed message per order it
//! accepts ([`PaymentTimeouts`](crate::ports::PaymentTimeouts)), and `expire-orders` applies the timeout when the message
//! arrives. SQS holds a message back for at most [`SQS_MAX_DELAY_SECONDS`], so a longer window is
//! covered by sending the message again with what remains.
//!
//! Exactly once, whatever the timing: the timeout is one conditional write on
//! `status = pending AND expires_at <= :now` that returns the stock in the same transaction,
//! and `pay` is conditional on `status = pending AND expires_at > :now` (see
//! [`Transition::window`]). Of a payment and a timeout racing at the deadline exactly one
//! wins, and a duplicate, early or late timeout message changes nothing it should not.

use crate::clock::Millis;
use crate::ids::OrderId;
use crate::limits::SQS_MAX_DELAY_SECONDS;
use crate::order::{transition, Event, Order, OrderStatus, Reason, Transition};
use crate::ports::{Advance, PortError, PortResult, Store};
use crate::product::Product;
use serde::{Deserialize, Serialize};

/// Reads and writes one timeout may take before it gives up as contention: each lost race
/// means the order changed, and after a change it is almost always settled.
const ATTEMPTS: usize = 4;

/// The body of a message on the payment-timeouts queue. It only names the order: the stored
/// order, not the message, says whether and when it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutMessage {
    pub order_id: OrderId,
}

/// An order whose payment window closes at `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentDue {
    pub order_id: OrderId,
    pub expires_at: Millis,
}

impl PaymentDue {
    /// The deadline of `order`, if it is pending.
    pub fn of(order: &Order) -> Option<Self> {
        let expires_at = order.expires_at?;
        (order.status == OrderStatus::Pending).then(|| Self {
            order_id: order.id.clone(),
            expires_at,
        })
    }

    /// The deadline of an order of `product` accepted at `accepted_at`: the `expires_at` the
    /// group commit writes.
    pub fn accepted(order_id: OrderId, product: &Product, accepted_at: Millis) -> Self {
        Self {
            order_id,
            expires_at: product.payment_due_at(accepted_at),
        }
    }

    /// How long SQS should hold the message back when it is sent at `now`.
    pub fn delay_seconds(&self, now: Millis) -> u32 {
        delay_seconds(self.expires_at, now)
    }
}

/// Seconds from `now` until `expires_at`, rounded up so that the message never arrives
/// before the deadline, and capped at [`SQS_MAX_DELAY_SECONDS`] (the receiver sends it again
/// when it arrives early because of the cap).
pub fn delay_seconds(expires_at: Millis, now: Millis) -> u32 {
    let ms = expires_at.saturating_sub(now).max(0);
    let secs = ms / 1000 + i64::from(ms % 1000 != 0);
    secs.min(i64::from(SQS_MAX_DELAY_SECONDS)) as u32
}

/// Which side of its payment deadline an order must be on for a transition to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// `expires_at > now`: paying is only possible while the window is open.
    Open,
    /// `expires_at <= now`: the timeout only fires once it has closed.
    Closed,
}

impl Transition {
    /// The deadline condition the storage write must carry besides `status = :from`. The two
    /// sides are disjoint, so when `pay` and the timeout race exactly one of them can win.
    pub fn window(&self) -> Option<Window> {
        match (self.from, self.to, self.reason) {
            (OrderStatus::Pending, OrderStatus::Paid, _) => Some(Window::Open),
            (OrderStatus::Pending, OrderStatus::Canceled, Some(Reason::PaymentTimeout)) => {
                Some(Window::Closed)
            }
            _ => None,
        }
    }
}

impl Window {
    /// Whether an order with this deadline is on this side of it at `now`, as the storage
    /// condition judges it (a missing deadline satisfies neither side).
    pub fn holds(self, expires_at: Option<Millis>, now: Millis) -> bool {
        match (self, expires_at) {
            (Self::Open, Some(e)) => e > now,
            (Self::Closed, Some(e)) => e <= now,
            (_, None) => false,
        }
    }
}

/// What a timeout should do with an order as read at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Pending past its deadline: apply this transition.
    Expire(Transition),
    /// Pending, but the deadline is still ahead (a window longer than SQS's longest delay).
    NotYet(PaymentDue),
    /// No longer pending (paid, canceled, ...): nothing to do.
    Settled,
    /// Pending without a deadline: a damaged item that no timeout can fix.
    NoDeadline,
}

pub fn due(order: &Order, now: Millis) -> Due {
    let Ok(t) = transition(order.status, order.reason, Event::PaymentTimeout) else {
        return Due::Settled;
    };
    match order.expires_at {
        Some(_) if Window::Closed.holds(order.expires_at, now) => Due::Expire(t),
        Some(expires_at) => Due::NotYet(PaymentDue {
            order_id: order.id.clone(),
            expires_at,
        }),
        None => Due::NoDeadline,
    }
}

/// What became of one timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// This call canceled the order and returned its stock.
    Expired(Order),
    /// The deadline is still ahead: schedule the timeout again.
    NotYet(PaymentDue),
    /// The order had already left `pending` (paid, canceled by its buyer, or timed out by
    /// an earlier delivery of the same message).
    Settled(OrderStatus),
    Missing,
    NoDeadline,
}

/// Applies the payment timeout to `order` (as read) at `now` if it is due: one conditional
/// write that cancels the order and returns its units. A lost race (the buyer paid or
/// canceled in between) re-reads the order and reports what it became.
pub async fn expire<S: Store>(store: &S, order: Order, now: Millis) -> PortResult<Expiry> {
    let mut order = order;
    for _ in 0..ATTEMPTS {
        match due(&order, now) {
            Due::Expire(t) => match store.advance(&order, &t, None, now).await? {
                Advance::Done(o) => return Ok(Expiry::Expired(o)),
                Advance::Stale => match store.get_order(&order.id).await? {
                    Some(o) => order = o,
                    None => return Ok(Expiry::Missing),
                },
            },
            Due::NotYet(d) => return Ok(Expiry::NotYet(d)),
            Due::Settled => {
                // Canceled (by this message's earlier delivery, or by its buyer): the process
                // that did it may have stopped between returning the stock and clearing the
                // sold-out flag, so clear it again (see `Store::clear_sold_out`).
                if order.status == OrderStatus::Canceled {
                    store.clear_sold_out(&order.sku).await?;
                }
                return Ok(Expiry::Settled(order.status));
            }
            Due::NoDeadline => return Ok(Expiry::NoDeadline),
        }
    }
    Err(PortError::Contention)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Quantity, Sku, UserId};
    use proptest::prelude::*;

    fn order(status: OrderStatus, reason: Option<Reason>, expires_at: Option<Millis>) -> Order {
        Order {
            id: OrderId::parse("0123456789abcdef0123456789abcdef").unwrap(),
            owner: UserId::parse("alice").unwrap(),
            sku: Sku::parse("SKU-1").unwrap(),
            quantity: Quantity::new(1).unwrap(),
            status,
            reason,
            created_at: 0,
            updated_at: 0,
            expires_at,
            fingerprint: String::new(),
            takes: Vec::new(),
            counted: false,
        }
    }

    #[test]
    fn delays_round_up_to_whole_seconds_and_stop_at_fifteen_minutes() {
        assert_eq!(delay_seconds(10_000, 10_000), 0);
        assert_eq!(delay_seconds(9_000, 10_000), 0);
        assert_eq!(delay_seconds(10_001, 10_000), 1);
        assert_eq!(delay_seconds(11_000, 10_000), 1);
        assert_eq!(delay_seconds(11_001, 10_000), 2);
        assert_eq!(delay_seconds(10_000 + 900_000, 10_000), 900);
        assert_eq!(
            delay_seconds(10_000 + 86_400_000, 10_000),
            SQS_MAX_DELAY_SECONDS
        );
        assert_eq!(
            delay_seconds(Millis::MAX, Millis::MIN),
            SQS_MAX_DELAY_SECONDS
        );
    }

    #[test]
    fn only_pay_and_the_timeout_carry_a_deadline_condition() {
        for from in OrderStatus::ALL {
            for event in Event::ALL {
                let Ok(t) = transition(from, None, event) else {
                    continue;
                };
                let expected = match event {
                    Event::Pay => Some(Window::Open),
                    Event::PaymentTimeout => Some(Window::Closed),
                    _ => None,
                };
                assert_eq!(t.window(), expected, "{from:?} {event:?}");
            }
        }
    }

    #[test]
    fn a_pending_order_is_due_exactly_from_its_deadline() {
        let o = order(OrderStatus::Pending, None, Some(5_000));
        let Due::NotYet(d) = due(&o, 4_999) else {
            panic!("due before the deadline")
        };
        assert_eq!((d.expires_at, d.delay_seconds(4_999)), (5_000, 1));
        for now in [5_000, 5_001, 99_000] {
            let Due::Expire(t) = due(&o, now) else {
                panic!("not due at {now}")
            };
            assert_eq!(
                (t.to, t.reason, t.restores_stock),
                (OrderStatus::Canceled, Some(Reason::PaymentTimeout), true)
            );
        }
    }

    #[test]
    fn a_settled_or_damaged_order_is_never_due() {
        for (status, reason) in [
            (OrderStatus::Queued, None),
            (OrderStatus::Rejected, Some(Reason::SoldOut)),
            (OrderStatus::Paid, None),
            (OrderStatus::Shipped, None),
            (OrderStatus::Completed, None),
            (OrderStatus::Canceled, Some(Reason::BuyerCanceled)),
            (OrderStatus::Canceled, Some(Reason::PaymentTimeout)),
        ] {
            assert_eq!(due(&order(status, reason, Some(1)), 10), Due::Settled);
        }
        assert_eq!(
            due(&order(OrderStatus::Pending, None, None), 10),
            Due::NoDeadline
        );
    }

    #[test]
    fn the_deadline_of_an_accepted_order_is_its_products_window_later() {
        let (p, _) = crate::product::ProductSpec {
            name: "x".into(),
            stock: 1,
            per_user_limit: None,
            sale_starts_at: None,
            sale_ends_at: None,
            payment_window_seconds: Some(Some(3_600)),
            shards: None,
        }
        .into_product(Sku::parse("SKU-1").unwrap())
        .unwrap();
        let o = order(OrderStatus::Queued, None, None);
        let d = PaymentDue::accepted(o.id.clone(), &p, 1_000);
        assert_eq!(d.expires_at, 3_601_000);
        assert_eq!(d.delay_seconds(1_000), SQS_MAX_DELAY_SECONDS);
        assert_eq!(PaymentDue::of(&o), None);
        let pending = order(OrderStatus::Pending, None, Some(7));
        assert_eq!(PaymentDue::of(&pending).map(|d| d.expires_at), Some(7));
    }

    #[test]
    fn a_timeout_message_names_only_the_order() {
        let m: TimeoutMessage =
            serde_json::from_str(r#"{"order_id":"0123456789abcdef0123456789abcdef"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"order_id":"0123456789abcdef0123456789abcdef"}"#
        );
        for bad in [
            r#"{"order_id":"x"}"#,
            r#"{}"#,
            r#"{"order_id":"0123456789abcdef0123456789abcdef","sku":"A"}"#,
        ] {
            assert!(
                serde_json::from_str::<TimeoutMessage>(bad).is_err(),
                "{bad}"
            );
        }
    }

    proptest! {
        /// At any instant exactly one of pay and the timeout may apply to a pending order
        /// with a deadline: the race between them always has exactly one winner.
        #[test]
        fn pay_and_the_timeout_never_both_apply(expires_at in -5_000i64..5_000, now in -5_000i64..5_000) {
            let pay = transition(OrderStatus::Pending, None, Event::Pay).unwrap();
            let timeout = transition(OrderStatus::Pending, None, Event::PaymentTimeout).unwrap();
            let (p, t) = (pay.window().unwrap(), timeout.window().unwrap());
            prop_assert!(p.holds(Some(expires_at), now) != t.holds(Some(expires_at), now));
            prop_assert!(!p.holds(None, now) && !t.holds(None, now));
            let o = order(OrderStatus::Pending, None, Some(expires_at));
            prop_assert_eq!(matches!(due(&o, now), Due::Expire(_)), t.holds(Some(expires_at), now));
        }

        /// A message sent with the delay never arrives before a deadline SQS can reach, and
        /// never a second after it; a deadline beyond SQS's longest delay gets that delay, and
        /// the message arrives before it (its receiver sends it again).
        #[test]
        fn the_delay_reaches_the_deadline_within_a_second(expires_at in 0i64..3_000_000, now in 0i64..3_000_000) {
            let delay = delay_seconds(expires_at, now);
            let arrives = now + i64::from(delay) * 1000;
            if expires_at - now <= i64::from(SQS_MAX_DELAY_SECONDS) * 1000 {
                prop_assert!(arrives >= expires_at);
                prop_assert!(arrives < expires_at.max(now) + 1000);
            } else {
                prop_assert_eq!(delay, SQS_MAX_DELAY_SECONDS);
                prop_assert!(arrives < expires_at);
            }
        }

        /// The edge a random search rarely hits: a deadline 899.001 to 900 s away gets exactly
        /// SQS's longest delay, rounded up and not cut short.
        #[test]
        fn a_deadline_just_within_reach_is_rounded_up_to_the_longest_delay(ms in 899_001i64..=900_000) {
            prop_assert_eq!(delay_seconds(1_000_000 + ms, 1_000_000), SQS_MAX_DELAY_SECONDS);
        }
    }
}
