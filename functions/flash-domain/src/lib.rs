//! The flash-sale domain: value types that cannot hold a bad value, the order state machine,
//! the group-commit planner that decides which queued orders get stock, and the ports the
//! functions use to reach storage and the queue. Nothing here knows about AWS or Lambda.

pub mod clock;
pub mod commit;
pub mod ids;
pub mod order;
pub mod plan;
pub mod ports;
pub mod product;

pub use ids::{IdempotencyKey, OrderId, Quantity, Sku, UserId, ValidationError};
pub use order::{Action, Order, OrderMessage, OrderRequest, OrderStatus, Reason, TransitionError};
pub use ports::{PortError, Queue, Store};
pub use product::{Product, ProductSpec};
