//! A failed record comes back within seconds through the event source, then goes to the DLQ.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_process_orders_fails_comes_back_in_seconds_through_the_event_source_and_then_goes_to_the_dlq(
) {
    use local_gateway::config::SqsMapping;
    use local_gateway::event_source::EventSource;
    use local_gateway::functions::SqsFunction;
    use std::time::Instant;

    // GIVEN a queue whose visibility timeout is 180 s and whose records go to its DLQ after
    // 2 receives, consumed by process-orders through the local event source
    let name = format!("comes-back-{}", rand::random::<u32>());
    let (url, dlq, arn) = stack::queue_with_dlq(&stack::sqs().await, &name, 180, 2).await;
    let sdk = stack::sdk().await;
    let mapping = SqsMapping {
        function: "ProcessOrdersFunction".into(),
        binary: "process-orders".into(),
        timeout_s: 30,
        queue_url: url.clone(),
        queue_arn: arn,
        batch_size: 10,
        batching_window_s: 0,
        max_concurrency: 1,
        report_batch_item_failures: true,
        enabled: true,
    };
    let function = SqsFunction::ProcessOrders(
        ProcessOrders {
            store: stack::store().await,
            timeouts: flash_aws::SqsTimeouts::from_config(
                &sdk,
                stack::var("PAYMENT_TIMEOUTS_QUEUE_URL"),
            ),
        },
        SqsQueue::from_config(&sdk, &url),
    );
    let poller = local_gateway::event_source::poller_client(&sdk);
    let source = Arc::new(EventSource::new(
        mapping,
        poller,
        Arc::new(function),
        "us-east-1",
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let pollers = source.spawn(&stopped);

    // WHEN a record that is no order arrives: process-orders reports it failed every time
    let sqs = stack::sqs().await;
    sqs.send_message()
        .queue_url(&url)
        .message_body("not an order")
        .send()
        .await
        .expect("SendMessage");
    let sent = Instant::now();

    // THEN it came back after 2 s (first receive) and 4 s (second), not 180 s, and the third
    // receive moved it to the DLQ: about 6 s after it was sent
    let mut in_dlq = None;
    while sent.elapsed() < Duration::from_secs(20) {
        let got = receive_batch(&sqs, &dlq, 1).await;
        if let Some(m) = got.first() {
            in_dlq = Some((sent.elapsed(), m.body().unwrap_or_default().to_owned()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(true);
    for p in pollers {
        let _ = p.await;
    }
    let (after, body) = in_dlq.expect("the record reached the DLQ within 20 s, not 2 x 180 s");
    assert_eq!(body, "not an order");
    assert!(
        after >= Duration::from_secs(5) && after < Duration::from_secs(15),
        "in the DLQ after {after:?}: the backoff should be 2 s, then 4 s"
    );
}
