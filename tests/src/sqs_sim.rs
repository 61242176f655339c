//! An SQS queue with its dead-letter queue, in memory, for the fault suite: at-least-once
//! delivery as the event source mapping sees it. A received message is in flight until the
//! consumer settles it: deleted if it succeeded, visible again if it failed or the consumer
//! crashed (its visibility timeout ran out); received once more after `max_receives`, it moves
//! to the DLQ instead, as a redrive policy's `maxReceiveCount` does. The suite can also put
//! copies of a message back (duplicate delivery) and redeliver anything from the archive or
//! the DLQ long after the fact.

use crate::fake::{message_body, FakeQueue};
use flash_domain::clock::Millis;
use flash_domain::expiry::{PaymentDue, TimeoutMessage};
use flash_domain::ports::{PaymentTimeouts, Unscheduled};
use rand::Rng;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// One message as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: String,
    pub body: String,
    /// How many times this copy has been received, this time included.
    pub receives: u32,
}

#[derive(Debug, Default)]
struct State {
    visible: VecDeque<Delivery>,
    in_flight: usize,
    dlq: Vec<Delivery>,
    /// Every message ever sent: (message id, body).
    archive: Vec<(String, String)>,
    next_id: usize,
}

#[derive(Debug)]
pub struct SimQueue {
    max_receives: u32,
    state: Mutex<State>,
}

impl SimQueue {
    /// A queue whose redrive policy moves a message to the DLQ after `max_receives` receives.
    pub fn new(max_receives: u32) -> Self {
        Self {
            max_receives,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `body`; its message id.
    pub fn send(&self, body: String) -> String {
        let mut st = self.state();
        let id = format!("msg-{:04}", st.next_id);
        st.next_id += 1;
        st.archive.push((id.clone(), body.clone()));
        st.visible.push_back(Delivery {
            message_id: id.clone(),
            body,
            receives: 0,
        });
        id
    }

    /// Moves what the functions sent through `queue` (the port) into this queue.
    pub fn pump(&self, queue: &FakeQueue) -> usize {
        let sent = queue.take();
        let n = sent.len();
        for m in sent {
            self.send(message_body(&m));
        }
        n
    }

    /// Receives up to `max` messages, in an order `rng` shuffles a little (standard queues
    /// do not keep order). A message received `max_receives` times already goes to the DLQ.
    pub fn receive(&self, max: usize, rng: &mut impl Rng) -> Vec<Delivery> {
        let mut st = self.state();
        let mut got = Vec::new();
        while got.len() < max && !st.visible.is_empty() {
            let i = rng.random_range(0..st.visible.len().min(3));
            let Some(mut d) = st.visible.remove(i) else {
                break;
            };
            if d.receives >= self.max_receives {
                st.dlq.push(d);
                continue;
            }
            d.receives += 1;
            got.push(d);
        }
        st.in_flight += got.len();
        got
    }

    /// Receives the message `message_id` if it is visible (to build a batch of chosen messages).
    pub fn receive_id(&self, message_id: &str) -> Option<Delivery> {
        let mut st = self.state();
        let i = st.visible.iter().position(|d| d.message_id == message_id)?;
        let mut d = st.visible.remove(i)?;
        d.receives += 1;
        st.in_flight += 1;
        Some(d)
    }

    /// Moves a received message to the DLQ, as if it had failed `max_receives` times during an
    /// outage.
    pub fn dead_letter(&self, mut d: Delivery) {
        let mut st = self.state();
        st.in_flight -= 1;
        d.receives = self.max_receives;
        st.dlq.push(d);
    }

    /// Puts `copies` extra copies of `d` back, as SQS may deliver a message more than once.
    pub fn duplicate(&self, d: &Delivery, copies: usize) {
        let mut st = self.state();
        for _ in 0..copies {
            st.visible.push_back(Delivery {
                receives: 0,
                ..d.clone()
            });
        }
    }

    /// Ends the receipt of `batch`: messages the consumer reported failed, or all of them when
    /// it crashed, become visible again; the rest are deleted.
    pub fn settle(&self, batch: Vec<Delivery>, failed: &HashSet<String>, crashed: bool) {
        let mut st = self.state();
        st.in_flight -= batch.len();
        for d in batch {
            if crashed || failed.contains(&d.message_id) {
                st.visible.push_back(d);
            }
        }
    }

    /// Nothing visible and nothing in flight.
    pub fn idle(&self) -> bool {
        let st = self.state();
        st.visible.is_empty() && st.in_flight == 0
    }

    pub fn visible(&self) -> usize {
        self.state().visible.len()
    }

    pub fn dlq(&self) -> Vec<Delivery> {
        self.state().dlq.clone()
    }

    /// Empties the DLQ (an operator's redrive); what it held.
    pub fn take_dlq(&self) -> Vec<Delivery> {
        std::mem::take(&mut self.state().dlq)
    }

    pub fn archive(&self) -> Vec<(String, String)> {
        self.state().archive.clone()
    }
}

/// The payment-timeouts queue as `process-orders` and `expire-orders` see it: each scheduled
/// timeout becomes a message on a [`SimQueue`]. The delay is not modelled; the suite decides
/// when a timeout's time has come and delivers it then.
#[derive(Debug, Clone)]
pub struct TimeoutsQueue(pub Arc<SimQueue>);

impl PaymentTimeouts for TimeoutsQueue {
    async fn schedule_timeouts(&self, due: &[PaymentDue], _now: Millis) -> Result<(), Unscheduled> {
        for d in due {
            let body = serde_json::to_string(&TimeoutMessage {
                order_id: d.order_id.clone(),
            })
            .unwrap_or_default();
            self.0.send(body);
        }
        Ok(())
    }
}
