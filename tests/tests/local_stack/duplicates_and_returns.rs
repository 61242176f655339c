//! Redelivered messages deduct once; concurrent cancels and refunds return each unit once.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_delivered_three_times_some_concurrently_deducts_once() {
    // GIVEN 60 units, 200 queued orders, and every message taken off the queue
    let sale = Sale::open("dup", json!({"name": "Watch", "stock": 60})).await;
    sale.rush(200, 50, |_| 1).await;
    let mut msgs = Vec::new();
    loop {
        let batch = receive_batch(&sale.sqs, &sale.url, 100).await;
        if batch.is_empty() {
            break;
        }
        delete(&sale.sqs, &sale.url, &batch.iter().collect::<Vec<_>>()).await;
        msgs.extend(batch);
    }
    assert_eq!(msgs.len(), 200);
    // WHEN each is delivered three times, shuffled, in batches processed six at a time
    let mut copies: Vec<(String, String)> = Vec::new();
    for round in 0..3 {
        for m in &msgs {
            copies.push((
                format!("{}-{round}", m.message_id().unwrap()),
                m.body().unwrap().to_owned(),
            ));
        }
    }
    use rand::seq::SliceRandom;
    copies.shuffle(&mut rand::rng());
    let batches: Vec<_> = copies.chunks(25).map(sqs_event).collect();
    let process = Arc::new(ProcessOrders {
        store: sale.store.clone(),
        timeouts: flash_tests::fake_expiry::FakeTimeouts::new(),
    });
    let resps = stack::spawn_gated(batches, 6, |event| {
        let process = process.clone();
        async move { flash_tests::drain::invoke(&process, event).await.0 }
    })
    .await;
    for resp in resps {
        assert!(
            resp.batch_item_failures.is_empty(),
            "{:?}",
            resp.batch_item_failures
        );
    }
    // THEN exactly 60 units are held, each order decided once, stock conserved
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_clean();
    assert_eq!(
        (a.units_held, a.available, a.rejected(Reason::SoldOut)),
        (60, 0, 140)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cancels_and_refunds_return_each_unit_exactly_once() {
    // GIVEN 40 buyers holding one unit each, half of them paid
    let sale = Sale::open("cancel", json!({"name": "Camera", "stock": 40})).await;
    let ids = sale.rush(40, 40, |_| 1).await;
    sale.drain(2).await;
    let advance = Arc::new(advance_order::AdvanceOrder::new(sale.store.clone()));
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let resp = advance
            .handle(Req::advance(&format!("buyer-{i}"), false, id, "pay").build())
            .await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(audit(&sale.store, &sale.sku).await.available, 0);
    // WHEN every buyer cancels (or refunds) three times at once, and an admin does too
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let action = if i % 2 == 0 { "refund" } else { "cancel" };
        let mut reqs: Vec<_> = (0..3)
            .map(|_| Req::advance(&format!("buyer-{i}"), false, id, action))
            .collect();
        reqs.push(Req::advance("admin-1", true, id, action));
        for req in reqs {
            let advance = advance.clone();
            tasks.push(tokio::spawn(
                async move { advance.handle(req.build()).await },
            ));
        }
    }
    for t in tasks {
        let resp = t.await.expect("task");
        assert_eq!(resp.status(), 200, "{:?}", body(&resp));
        assert_eq!(body(&resp)["status"], "canceled");
    }
    // THEN all 40 units are back, exactly once each
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!(
        (a.available, a.units_held, a.count(OrderStatus::Canceled)),
        (40, 0, 40)
    );
}
