//! An admin's `PUT /products/{sku}`: create the product, or add stock to it, safe to retry.
//! With an `Idempotency-Key` the write and the key's record are one transaction, so a retry
//! (after a timeout, a crash, a lost answer) finds the record and adds nothing, however far
//! the first attempt got. The products function and the operator's tools share this.

use crate::ids::{key_digest, IdempotencyKey, UserId, ValidationError};
use crate::ports::{KeyRecord, PortError, ProductWrite, Store};
use crate::product::ProductPut;

/// Reads and writes before giving up on a product that keeps changing under the request (a
/// concurrent create of the same SKU, an admin moving the sale window at the same time).
const PUT_ATTEMPTS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Restocked,
    /// A retry of an earlier request under the same key: nothing written, and the answer is
    /// the first one's (`created` says which).
    Replayed {
        created: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The key came with another request.
    #[error("the Idempotency-Key was used with another request")]
    KeyReused,
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Creates the product `put` names, or adds its stock to the existing one. `key` is the
/// caller's `Idempotency-Key`, if any.
pub async fn put_product<S: Store>(
    store: &S,
    put: &ProductPut,
    key: Option<(&UserId, &IdempotencyKey)>,
) -> Result<PutOutcome, PutError> {
    let fingerprint = put.fingerprint();
    let record = |created| {
        key.map(|(user, key)| KeyRecord {
            id: key_digest(user, key),
            fingerprint: fingerprint.clone(),
            created,
        })
    };
    for _ in 0..PUT_ATTEMPTS {
        let (written, created) = match store.get_product(&put.sku).await? {
            None => {
                let product = put.new_product();
                let stock = product.split(put.stock);
                let key = record(true);
                let written = store.create_product(&product, &stock, key.as_ref()).await?;
                (written, true)
            }
            Some(existing) => {
                // The shard count is fixed at creation; new stock spreads over it.
                let stock = put.restocked(&existing)?.split(put.stock);
                let key = record(false);
                (store.add_stock(put, &stock, key.as_ref()).await?, false)
            }
        };
        match written {
            ProductWrite::Written if created => return Ok(PutOutcome::Created),
            ProductWrite::Written => return Ok(PutOutcome::Restocked),
            ProductWrite::KeyUsed(earlier) if earlier.fingerprint == fingerprint => {
                return Ok(PutOutcome::Replayed {
                    created: earlier.created,
                })
            }
            ProductWrite::KeyUsed(_) => return Err(PutError::KeyReused),
            ProductWrite::Raced => continue,
        }
    }
    Err(PortError::Contention.into())
}
