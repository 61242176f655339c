//! The flash-sale domain: value types that cannot hold a bad value, the order state machine,
//! the group-commit planner that decides which queued orders get stock, and the ports the
//! functions use to reach storage and the queue, and the pure state of the admission guards
//! (the per-caller token bucket, the circuit breaker); the invariant rules the tests and the
//! reconciler judge the table by; and an admin's product write (`put_product`), written
//! against the ports so the function and the operator's tools share it. Nothing here knows
//! about AWS or Lambda.

pub mod backoff;
pub mod breaker_state;
pub mod clock;
pub mod commit;
pub mod expiry;
pub mod ids;
pub mod invariant_check;
pub mod invariant_tally;
pub mod limits;
pub mod order;
pub mod plan;
pub mod ports;
pub mod product;
pub mod put_product;
pub mod token_bucket;

pub use ids::{IdempotencyKey, OrderId, Quantity, Sku, UserId, ValidationError};
pub use order::{Action, Order, OrderMessage, OrderStatus, Reason, TransitionError};
pub use ports::{PortError, Queue, RateLimit, Store};
pub use product::{Product, ProductPut, ProductSpec};
