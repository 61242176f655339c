//! The `Store` contract (`flash_tests::store_contract`) run against both stores: `fake::` over
//! the in-memory `FakeStore`, `dynamodb::` over the DynamoDB adapter on DynamoDB Local (the
//! local stack; it fails, never skips, without it). The same case passing in both is what
//! lets the handler and fault tests trust the fake to answer as the table would.

use flash_domain::Sku;
use flash_tests::stack::{self, unique_sku};

/// A SKU no other case or run uses.
fn fresh_sku() -> Sku {
    Sku::parse(&unique_sku("CONTRACT")).expect("valid sku")
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod fake {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let store = flash_tests::fake::FakeStore::new();
                    flash_tests::store_contract::$case(&store, &fresh_sku()).await;
                }
            )*
        }

        mod dynamodb {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let store = stack::store().await;
                    flash_tests::store_contract::$case(&store, &fresh_sku()).await;
                }
            )*
        }
    };
}

contract!(
    products_are_created_once_read_back_and_restocked,
    the_sold_out_flag_is_set_only_while_no_stock_came_back,
    the_low_stock_hint_is_set_and_a_restock_clears_it,
    an_order_is_written_once_and_read_back_item_for_item,
    limited_orders_are_admitted_up_to_the_limit,
    a_commit_takes_stock_accepts_orders_and_counts_purchases,
    a_refused_commit_writes_nothing_and_says_why,
    only_a_queued_order_is_rejected_and_only_once,
    an_advance_applies_only_to_the_order_as_read,
    a_cancel_returns_the_units_and_the_count_once,
);
