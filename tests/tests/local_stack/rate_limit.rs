//! The per-caller rate limit in DynamoDB, and place-order as the local gateway builds it from the template.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_in_dynamodb_admits_exactly_its_capacity_across_instances() {
    use flash_domain::token_bucket::TokenBucket;
    // GIVEN four place-order instances sharing one table, each caller with a bucket of 5
    // tokens that refills one every 1,000 s (none comes back during the test)
    let sale = Sale::open("rate", json!({"name": "Phone", "stock": 1000})).await;
    let bucket = TokenBucket::new(5, 0.001).expect("valid");
    let (queue, _) = stack::test_queue("rate").await;
    let mut instances = Vec::new();
    for _ in 0..4 {
        let store = stack::store().await;
        let limit = stack::rate_limit(bucket).await;
        instances.push(Arc::new(
            PlaceOrder::new(store, queue.clone()).with_rate_limit(limit),
        ));
    }
    // WHEN one caller sends 40 orders at once, spread over the instances (a caller of this
    // run's own: buckets are per caller, not per product)
    let rusher = format!("rusher-{}", sale.sku);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let place = instances[i % 4].clone();
            let req = sale.one_unit(&rusher, &format!("{}-r-{i}", sale.sku));
            tokio::spawn(async move { place.handle(req.build()).await })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        let resp = t.await.expect("task");
        match resp.status().as_u16() {
            202 => admitted += 1,
            429 => {
                assert_eq!(body(&resp)["error"]["code"], "rate_limited");
                let secs: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("seconds");
                // About one refill interval; but a request whose clock was read a moment
                // before another's write may be refused a few milliseconds before the last
                // token comes free (to another caller's later clock), and is told 1 s.
                assert!((1..=1001).contains(&secs), "Retry-After {secs}");
            }
            other => panic!("unexpected {other}: {:?}", body(&resp)),
        }
    }
    // THEN exactly 5 got through, however the instances raced
    assert_eq!(admitted, 5);
    // AND another caller is not affected
    let other = instances[0]
        .handle(
            sale.one_unit(&format!("calm-{}", sale.sku), &format!("{}-calm", sale.sku))
                .build(),
        )
        .await;
    assert_eq!(other.status(), 202);
}

/// place-order as the local gateway builds it: by the constructor its `main.rs` calls, from
/// the environment gateway.json gives it (template.yaml's, resolved for this stack), with
/// `knobs` set over it as the caller's are. It sends to a queue of this test's own.
async fn gateway_place_order(knobs: &[(&str, &str)]) -> place_order::Deployed {
    use local_gateway::config::GatewayConfig;
    use local_gateway::functions::HttpFunction;
    let config = GatewayConfig::load(&stack::state_dir()).expect("the stack's gateway.json");
    let route = config
        .routes
        .iter()
        .find(|r| r.binary == "place-order")
        .expect("a place-order route");
    let knobs: Vec<(String, String)> = knobs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = config
        .environment(&route.function, &knobs)
        .expect("the template declares place-order's environment");
    let aws = flash_aws::Aws::new(stack::sdk().await);
    let Ok(Some(HttpFunction::PlaceOrder(place))) = HttpFunction::build("place-order", &aws, &env)
    else {
        panic!("place-order did not start from {env:?}");
    };
    let mut place = *place;
    place.queue = stack::test_queue("wired").await.0;
    place
}

/// `n` orders of one unit by one caller, one after another: how many were admitted before the
/// first refusal, and the codes of the refusals.
async fn rapid_orders(place: place_order::Deployed, n: usize) -> (usize, Vec<Value>) {
    let sku = unique_sku("wired");
    let products = products::Products::new(stack::store().await);
    let resp = products
        .handle(Req::put_product(&sku, &json!({"name": "Phone", "stock": 100}).to_string()).build())
        .await;
    assert_eq!(resp.status(), 201, "{:?}", body(&resp));
    let caller = format!("rapid-{sku}");
    let (mut admitted, mut refused) = (0, Vec::new());
    for i in 0..n {
        let req = Req::place_order(
            &caller,
            &format!("{sku}-{i}"),
            &json!({"sku": sku, "quantity": 1}).to_string(),
        );
        let resp = place.handle(req.build()).await;
        match resp.status().as_u16() {
            202 if refused.is_empty() => admitted += 1,
            429 => refused.push(body(&resp)["error"]["code"].clone()),
            other => panic!("unexpected {other}: {:?}", body(&resp)),
        }
    }
    (admitted, refused)
}

// A token comes back every 1,000 s in these two: none returns while the requests run, however
// slow the machine.
#[tokio::test]
async fn the_gateways_place_order_refuses_the_11th_rapid_request_as_the_template_declares() {
    // GIVEN place-order built as the local gateway builds it, from the template's environment
    // (a burst of 10 per caller)
    let place = gateway_place_order(&[("RATE_LIMIT_PER_SECOND", "0.001")]).await;
    // WHEN one caller sends 11 orders
    let (admitted, refused) = rapid_orders(place, 11).await;
    // THEN ten are admitted and the 11th is refused 429 rate_limited
    assert_eq!(admitted, 10);
    assert_eq!(refused, [json!("rate_limited")]);
}

#[tokio::test]
async fn the_gateways_place_order_takes_its_rate_limit_and_breakers_from_its_environment() {
    // GIVEN place-order built as the gateway builds it, with a burst of 3 and breakers that
    // open on the first failure set over the template's environment
    let settings = [
        ("RATE_LIMIT_CAPACITY", "3"),
        ("RATE_LIMIT_PER_SECOND", "0.001"),
        ("BREAKER_FAILURES", "1"),
    ];
    let place = gateway_place_order(&settings).await;
    // THEN both its breakers have those settings
    let breakers =
        flash_aws::config::breakers(&flash_aws::Env::from_iter(settings)).expect("valid settings");
    assert_eq!(breakers.failures, 1);
    assert_eq!(place.breakers().0.config(), breakers);
    assert_eq!(place.breakers().1.config(), breakers);
    // AND WHEN one caller sends 4 orders, the 4th is refused
    let (admitted, refused) = rapid_orders(place, 4).await;
    assert_eq!(admitted, 3);
    assert_eq!(refused, [json!("rate_limited")]);
}
