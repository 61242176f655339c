//! Every action the state machine forbids: refused naming the current status, nothing written.

use super::*;

// --- The state machine ---------------------------------------------------------------------

/// Every (status, reason) an order can be stored with.
const STORED: &[(OrderStatus, Option<Reason>)] = &[
    (OrderStatus::Queued, None),
    (OrderStatus::Rejected, Some(Reason::SoldOut)),
    (OrderStatus::Rejected, Some(Reason::PurchaseLimit)),
    (OrderStatus::Rejected, Some(Reason::SaleNotOpen)),
    (OrderStatus::Pending, None),
    (OrderStatus::Paid, None),
    (OrderStatus::Shipped, None),
    (OrderStatus::Completed, None),
    (OrderStatus::Canceled, Some(Reason::BuyerCanceled)),
    (OrderStatus::Canceled, Some(Reason::PaymentTimeout)),
    (OrderStatus::Canceled, Some(Reason::Refunded)),
];

const ACTIONS: [&str; 5] = ["pay", "cancel", "refund", "ship", "confirm"];

/// What `API.md` allows, written out from its prose rather than taken from the domain: each
/// action's one source status, and what a repeat that already took effect looks like.
fn contract_allows(status: OrderStatus, reason: Option<Reason>, action: &str) -> bool {
    use OrderStatus::*;
    let first_time = matches!(
        (action, status),
        ("pay", Pending)
            | ("cancel", Pending)
            | ("refund", Paid)
            | ("ship", Paid)
            | ("confirm", Shipped)
    );
    let repeat = matches!(
        (action, status, reason),
        ("pay", Paid, _)
            | ("cancel", Canceled, Some(Reason::BuyerCanceled))
            | ("refund", Canceled, Some(Reason::Refunded))
            | ("ship", Shipped, _)
            | ("confirm", Completed, _)
    );
    first_time || repeat
}

#[tokio::test]
async fn every_action_the_state_machine_forbids_is_refused_naming_the_current_status_and_writes_nothing(
) {
    // GIVEN SKU-1, and one order of alice's stored in each status (and each reason)
    let store = FakeStore::new();
    let spec: ProductSpec = serde_json::from_str(SPEC).expect("a valid spec");
    let (product, stock): (Product, u64) = spec.into_product(sku(SKU)).expect("a valid product");
    store.seed_product(product, stock);
    let orders: Vec<Order> = STORED
        .iter()
        .enumerate()
        .map(|(i, &(status, reason))| {
            stored_order(
                id_for("alice", &format!("k-{i}")),
                user("alice"),
                status,
                reason,
            )
        })
        .collect();
    for o in &orders {
        store.seed_order(o.clone());
    }
    let handler = AdvanceOrder::new(store.clone()).with_rate_limit(store.clone());
    let (mut forbidden, mut wrong) = (0, Vec::new());
    for o in &orders {
        for action in ACTIONS {
            if contract_allows(o.status, o.reason, action) {
                continue;
            }
            forbidden += 1;
            // WHEN an admin, and (for what a buyer may do at all) the owner, takes a forbidden
            // action on it
            let callers: &[(&str, bool)] = if action == "ship" {
                &[("admin-1", true)]
            } else {
                &[("admin-1", true), ("alice", false)]
            };
            for &(who, admin) in callers {
                let before = store.snapshot();
                let req = Req::advance(who, admin, o.id.as_str(), action).build();
                let r = Resp::lenient(handler.handle(req).await);
                let what = format!("{who} {action} on {:?} {:?}", o.status, o.reason);
                // THEN it is refused as an invalid transition naming the status as it is
                if let Some(why) = r.error_mismatch(409, "invalid_transition") {
                    wrong.push(format!("{what}: {why}"));
                }
                let named = o.status.as_str();
                let message = r.body["error"]["message"].as_str().unwrap_or("");
                if r.body["error"]["status"] != named || !message.contains(named) {
                    wrong.push(format!("{what}: does not name {named}: {}", r.body));
                }
                // AND nothing is written: not the order, not the stock, not the counters
                if store.snapshot() != before {
                    wrong.push(format!("{what}: wrote"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    // 11 stored states × 5 actions, less 5 first-time transitions and 5 repeats.
    assert_eq!(forbidden, 45);
}
