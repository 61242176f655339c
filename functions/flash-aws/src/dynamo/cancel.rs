//! What a canceled transaction means. DynamoDB answers a canceled `TransactWriteItems` with
//! one reason per item, in the order of the items; the caller first decodes the failed
//! conditions it expects (its business answers), and whatever is left goes through
//! [`canceled_error`], the one place that turns reason codes into a [`PortError`].

use super::keys::Item;
use crate::errors::DEGRADED_TRANSACTION_REASONS;
use flash_domain::ports::PortError;

/// Each item's reason code and, for a failed condition asked for with `ALL_OLD`, the item as
/// it is now.
pub(super) type Reasons = Vec<(Option<String>, Option<Item>)>;

/// The reason of an item that was fine: the transaction failed because of another item.
const FINE: &str = "None";
const CONDITION_FAILED: &str = "ConditionalCheckFailed";
const CONFLICT: &str = "TransactionConflict";

/// A transaction canceled for reasons other than the failed conditions its caller decoded:
///
/// - an item throttled (`ThrottlingError`, `ProvisionedThroughputExceeded`): the table is
///   shedding load, [`PortError::Degraded`], which the circuit breaker counts and the retry
///   loops back off from;
/// - no condition failure and no throttling, only `TransactionConflict` and `None`: another
///   writer's transaction held one of the items. Nothing is wrong with the request and every
///   write is conditional, so it is [`PortError::Contention`], safe to retry. The list is
///   never indexed: an empty one (DynamoDB sends one reason per item, but nothing else
///   promises it) names no failure either, and is contention too, never a panic;
/// - any other code: [`PortError::Unavailable`], carrying the codes. That is a
///   `ValidationError` (the request itself is wrong: an item over 400 KB, a bad expression),
///   `ItemCollectionSizeLimitExceeded` (the table has no local index, so never), a failed
///   condition its caller did not expect, or a code this version does not know. Trying again
///   cannot change any of them, so calling them contention would only spend the retry loops'
///   patience (four seconds for a stock return) and then report a `Contention` that has lost
///   the codes. `Unavailable` stops at once, keeps the codes in the error chain that the edge
///   logs, and is still a `503` to the caller or a failed record to SQS, so the work is done
///   again later, not lost.
pub(super) fn canceled_error(reasons: &[(Option<String>, Option<Item>)]) -> PortError {
    let codes: Vec<&str> = reasons.iter().filter_map(|(c, _)| c.as_deref()).collect();
    let message = || format!("transaction canceled: {}", codes.join(", "));
    if codes
        .iter()
        .any(|c| DEGRADED_TRANSACTION_REASONS.contains(c))
    {
        PortError::degraded("dynamodb TransactWriteItems", message())
    } else if codes.iter().all(|&c| c == FINE || c == CONFLICT) {
        PortError::Contention
    } else {
        PortError::unavailable("dynamodb TransactWriteItems", message())
    }
}

/// Whether an item's condition failed: a business answer, decoded by the caller.
pub(super) fn is_ccf(code: &Option<String>) -> bool {
    code.as_deref() == Some(CONDITION_FAILED)
}

/// Whether an item met another writer's transaction.
pub(super) fn is_conflict(code: &Option<String>) -> bool {
    code.as_deref() == Some(CONFLICT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(codes: &[&str]) -> Reasons {
        codes
            .iter()
            .map(|c| (Some((*c).to_owned()), None))
            .collect()
    }

    #[test]
    fn a_conflict_with_another_writer_is_contention() {
        for codes in [
            &["TransactionConflict"][..],
            &["None", "TransactionConflict", "None"],
        ] {
            assert!(
                matches!(canceled_error(&reasons(codes)), PortError::Contention),
                "{codes:?}"
            );
        }
    }

    #[test]
    fn an_empty_or_silent_reason_list_is_contention_not_a_panic() {
        assert!(matches!(canceled_error(&[]), PortError::Contention));
        assert!(matches!(
            canceled_error(&[(None, None), (None, None)]),
            PortError::Contention
        ));
        assert!(matches!(
            canceled_error(&reasons(&["None"])),
            PortError::Contention
        ));
    }

    #[test]
    fn a_throttled_item_is_degraded_even_beside_a_conflict() {
        for codes in [
            &["ThrottlingError"][..],
            &["None", "ProvisionedThroughputExceeded"],
            &["TransactionConflict", "ThrottlingError"],
            &["ValidationError", "ThrottlingError"],
        ] {
            assert!(canceled_error(&reasons(codes)).is_degraded(), "{codes:?}");
        }
    }

    #[test]
    fn a_code_that_retrying_cannot_change_is_unavailable_with_its_codes() {
        for codes in [
            &["ValidationError"][..],
            &["None", "ItemCollectionSizeLimitExceeded"],
            &["TransactionConflict", "SomethingNew"],
            &["ConditionalCheckFailed", "None"],
        ] {
            let error = canceled_error(&reasons(codes));
            let PortError::Unavailable { source, .. } = &error else {
                panic!("{codes:?}: {error:?}");
            };
            for code in codes.iter().filter(|&&c| c != "None") {
                assert!(source.to_string().contains(code), "{codes:?}: {source}");
            }
        }
    }
}
