//! `per_order`: one conditional decrement of the stock item per order (`available >= :q`), the
//! atomic check-and-decrement a Redis Lua script gives, synchronous in the API call. Every
//! order writes the hot item once until the sell-out, so the item's write budget is the ceiling.
//! Like the other designs it reads the stock first and refuses without writing once it is gone.

use crate::hot::{self, classify, n, Call, Hot, HotDesign};
use crate::sale::{Answer, Decision, Design, DesignReport, Details, Run, Sale};
use aws_sdk_dynamodb::types::ReturnValue;
use aws_sim::CapacityModel;
use std::sync::Arc;

pub struct PerOrder {
    hot: Hot,
}

impl Design for PerOrder {
    async fn buy(&self, _worker: usize, buyer: usize, run: &Run) -> Answer {
        match self.hot.read_stock().await {
            Ok((available, _)) if available < 1 => return Answer::Decided(Decision::SoldOut),
            Ok(_) => {}
            Err(code) => return Answer::Unavailable(code),
        }
        let out = self
            .hot
            .client
            .update_item()
            .table_name(&self.hot.table)
            .set_key(Some(self.hot.key("STOCK")))
            .update_expression("SET available = available - :q")
            .condition_expression("available >= :q")
            .expression_attribute_values(":q", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match classify(out) {
            Call::Done(out) => {
                self.hot.stock_write();
                let left = out
                    .attributes
                    .map(|a| hot::number(&a, "available"))
                    .unwrap_or(1);
                if left == 0 {
                    run.mark_sellout();
                }
                self.hot.record_order(buyer).await;
                Answer::Decided(Decision::Sold)
            }
            Call::Condition => {
                self.hot.stock_write();
                Answer::Decided(Decision::SoldOut)
            }
            Call::Unavailable(code) => Answer::Unavailable(code),
        }
    }
}

impl HotDesign for PerOrder {
    fn hot(&self) -> &Hot {
        &self.hot
    }
}

pub async fn run(
    sale: &Sale,
    model: &CapacityModel,
    table: &str,
    sku: String,
) -> anyhow::Result<(DesignReport, Details)> {
    let hot = Hot::new(hot::client(model, "per_order").await, table, sku);
    hot::run_design(Arc::new(PerOrder { hot }), sale, model).await
}
