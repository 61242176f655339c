//! Setting up a catalog is not throttled like a buyer: one admin token creates 250 products
//! through the local gateway (the functions as template.yaml configures them, the admin
//! rate limit at its defaults) without a single `429`, even right after spending its buyer
//! bucket on orders; the buyers' bucket (a burst of 10) would refuse the eleventh.

use flash_tests::gateway::Gateway;
use flash_tests::stack;
use serde_json::json;
use std::time::Instant;

const PRODUCTS: usize = 250;

#[test]
fn an_admin_creates_250_products_in_a_row_without_a_429() {
    // GIVEN the local gateway and one admin token
    let gateway = Gateway::start("admin-rate-limit");
    let admin = gateway.token(&stack::unique_sku("catalog-admin"), true, 3600);
    let prefix = stack::unique_sku("CAT");
    // AND the admin has spent its buyer bucket (a burst of 10) on orders of its own: the
    // admin bucket is another item, so that costs it no admin token
    let (status, body) = gateway.call(
        "PUT",
        &format!("/products/{prefix}-BUY"),
        Some(&admin),
        Some(&json!({"name": "Bought by the admin", "stock": 100})),
    );
    assert_eq!(status, 201, "{body}");
    // (sent until one is refused: the bucket refills 2 a second while the orders are answered)
    let mut orders = Vec::new();
    while orders.last() != Some(&429) && orders.len() < 40 {
        let body = json!({"sku": format!("{prefix}-BUY"), "quantity": 1});
        orders.push(gateway.call("POST", "/orders", Some(&admin), Some(&body)).0);
    }
    assert_eq!(
        orders.last(),
        Some(&429),
        "the buyer bucket did not run out in 40 orders: {orders:?}"
    );
    // WHEN it PUTs 250 products as fast as they are answered, 4 at a time
    let started = Instant::now();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (gateway, admin, prefix) = (&gateway, &admin, &prefix);
                s.spawn(move || {
                    (w..PRODUCTS)
                        .step_by(4)
                        .map(|i| {
                            let (status, body) = gateway.call(
                                "PUT",
                                &format!("/products/{prefix}-{i:03}"),
                                Some(admin),
                                Some(&json!({"name": format!("Item {i}"), "stock": 4})),
                            );
                            assert_ne!(status, 429, "product {i} was rate limited: {body}");
                            status
                        })
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a worker finished"))
            .collect()
    });
    // THEN every one was created
    let created = statuses.iter().filter(|&&s| s == 201).count();
    println!(
        "{created} of {PRODUCTS} products created in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(created, PRODUCTS, "statuses: {statuses:?}");
}
