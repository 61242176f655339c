//! `per_order`: one conditional decrement of the stock item per order (`available >= :q`), the
//! atomic check-and-decrement a Redis Lua script gives, synchronous in the API call. Every
//! order writes the hot item once until the sell-out, so the item's write budget is the ceiling.
//! Like the other designs it reads the stock first and refuses without writing once it is gone.
//! In a catalog each SKU has its own stock item, and each buyer writes the one they want.

use crate::hot::{self, classify, n, Call, Hot, HotDesign, Setup};
use crate::sale::{Answer, Decision, Design, DesignReport, Details, Run, Sale};
use aws_sdk_dynamodb::types::ReturnValue;
use std::sync::Arc;

pub struct PerOrder {
    /// One stock item per SKU of the catalog.
    hots: Vec<Hot>,
    sale: Sale,
}

impl Design for PerOrder {
    async fn buy(&self, _worker: usize, buyer: usize, run: &Run) -> Answer {
        let Some(hot) = self.hots.get(self.sale.choice(buyer)) else {
            return Answer::Decided(Decision::Refused("no_such_sku"));
        };
        match hot.read_stock().await {
            Ok((available, _)) if available < 1 => return Answer::Decided(Decision::SoldOut),
            Ok(_) => {}
            Err(code) => return Answer::Unavailable(code),
        }
        let out = hot
            .update_stock()
            .update_expression("SET available = available - :q")
            .condition_expression("available >= :q")
            .expression_attribute_values(":q", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match classify(out) {
            Call::Done(out) => {
                hot.stock_write();
                let left = out
                    .attributes
                    .map(|a| hot::number(&a, "available"))
                    .unwrap_or(1);
                if left == 0 {
                    // The one write that took this SKU's last unit.
                    run.sku_sold_out(self.sale.choice(buyer));
                }
                hot.record_order(buyer).await;
                Answer::Decided(Decision::Sold)
            }
            Call::Condition => {
                hot.stock_write();
                Answer::Decided(Decision::SoldOut)
            }
            Call::Unavailable(code) => Answer::Unavailable(code),
        }
    }
}

impl HotDesign for PerOrder {
    fn hots(&self) -> &[Hot] {
        &self.hots
    }
}

/// The sale over every SKU of `sale`'s catalog, each with its own stock item.
pub async fn run(setup: Setup<'_>) -> anyhow::Result<(DesignReport, Details)> {
    let (counter, client) = setup.counted_client("per_order").await;
    let catalog = &setup.sale.catalog;
    let hots = (0..catalog.skus())
        .map(|i| Hot::new(client.clone(), setup.table, catalog.sku(&setup.sku, i)))
        .collect();
    let design = Arc::new(PerOrder {
        hots,
        sale: setup.sale.clone(),
    });
    hot::run_design(design, setup.sale, setup.model, &counter).await
}
