//! `flashctl`, the real binary, against the local stack (DynamoDB Local and fauxqs): each
//! command as an operator runs it, on a table of its own (`--table`) and, for the DLQ, queues
//! of its own, with `--json` read back and errors checked to be one line and a non-zero exit.

use aws_sdk_dynamodb::types::AttributeValue;
use flash_aws::{DynamoStore, SqsQueue};
use flash_domain::OrderId;
use flash_tests::drain::{delete, drain, queue_empty, receive_batch};
use flash_tests::fake_expiry::FakeTimeouts;
use flash_tests::fixtures::{json_body as body, Req};
use flash_tests::stack::{self, unique_sku};
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;

/// What one run of flashctl answered.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", self.stdout, self.stderr))
    }

    /// Succeeded, printing nothing on stderr.
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{}{}", self.stdout, self.stderr);
        self
    }

    /// Failed with status 2 and exactly one line on stderr, containing `what`.
    fn refused(self, what: &str) -> Self {
        assert_eq!(self.code, 2, "{}{}", self.stdout, self.stderr);
        assert_eq!(self.stderr.lines().count(), 1, "{:?}", self.stderr);
        assert!(self.stderr.contains(what), "{:?}", self.stderr);
        self
    }
}

fn command(table: &str, args: &[&str]) -> Command {
    let mut c = Command::new(stack::flashctl_bin());
    c.arg("--env-file")
        .arg(stack::env_file())
        .args(["--table", table])
        .args(args);
    c
}

fn flashctl(table: &str, args: &[&str]) -> Run {
    let out = command(table, args).output().expect("flashctl runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn table() -> DynamoStore {
    stack::fresh_table().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_put_get_and_list_write_through_the_products_function_and_refuse_bad_input() {
    let store = table().await;
    let t = store.table();
    // WHEN an operator creates a product, then restocks it
    let created = flashctl(
        t,
        &[
            "--json",
            "product",
            "put",
            "LAMP-1",
            "--name",
            "Lamp",
            "--stock",
            "10",
            "--per-user-limit",
            "2",
        ],
    )
    .ok()
    .json();
    assert_eq!(created["status"], 201);
    assert_eq!(created["product"]["available"], 10);
    let restocked = flashctl(
        t,
        &[
            "--json", "product", "put", "LAMP-1", "--name", "Lamp", "--stock", "5",
        ],
    )
    .ok()
    .json();
    assert_eq!(restocked["status"], 200);
    // THEN get and list show it as the API does
    let got = flashctl(t, &["--json", "product", "get", "LAMP-1"])
        .ok()
        .json();
    assert_eq!(
        (got["available"].clone(), got["sku"].clone()),
        (json!(15), json!("LAMP-1"))
    );
    flashctl(
        t,
        &["product", "put", "DESK-1", "--name", "Desk", "--stock", "3"],
    )
    .ok();
    let list = flashctl(t, &["--json", "product", "list"]).ok().json();
    let skus: Vec<&str> = list
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|p| p["sku"].as_str())
        .collect();
    assert_eq!(skus, ["DESK-1", "LAMP-1"]);
    assert_eq!(list[1]["stock_added"], 15);
    // AND bad input is refused by the function's own validation, in one line, writing nothing
    flashctl(
        t,
        &["product", "put", "LAMP-1", "--name", "Lamp", "--stock", "0"],
    )
    .refused("400 invalid_request");
    flashctl(
        t,
        &[
            "product", "put", "bad sku", "--name", "Lamp", "--stock", "1",
        ],
    )
    .refused("400 invalid_request");
    assert_eq!(
        flashctl(t, &["--json", "product", "get", "LAMP-1"])
            .ok()
            .json()["available"],
        15
    );
    flashctl(t, &["product", "get", "NOPE"]).refused("404 not_found");
    flashctl(t, &["order", "get", "not-an-id"]).refused("order id");
    // AND a stack file that does not exist is one clear line
    let out = Command::new(stack::flashctl_bin())
        .args(["--env-file", "/nonexistent/stack.env", "product", "list"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("make up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_the_same_file_twice_adds_nothing_the_second_time() {
    let store = table().await;
    let t = store.table();
    let dir = std::env::temp_dir().join(unique_sku("import"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // GIVEN a JSON catalog of three products
    let catalog = dir.join("catalog.json");
    let products = json!([
        {"sku": "CUP-1", "name": "Cup", "stock": 5},
        {"sku": "PEN-1", "name": "Pen", "stock": 7, "per_user_limit": 3},
        {"sku": "INK-1", "name": "Ink", "stock": 2, "shards": 2},
    ]);
    std::fs::write(&catalog, products.to_string()).expect("written");
    let path = catalog.to_string_lossy().into_owned();
    // WHEN it is imported twice
    let first = flashctl(t, &["--json", "product", "import", &path])
        .ok()
        .json();
    let second = flashctl(t, &["--json", "product", "import", &path])
        .ok()
        .json();
    // THEN the first creates them and the second adds nothing
    let counts = |s: &Value| {
        [
            &s["created"],
            &s["restocked"],
            &s["unchanged"],
            &s["failed"],
        ]
        .map(|v| v.as_u64().unwrap_or(99))
    };
    assert_eq!(counts(&first), [3, 0, 0, 0], "{first}");
    assert_eq!(counts(&second), [0, 0, 3, 0], "{second}");
    let available = |sku: &str| {
        flashctl(t, &["--json", "product", "get", sku]).ok().json()["available"].clone()
    };
    assert_eq!(
        [available("CUP-1"), available("PEN-1"), available("INK-1")],
        [json!(5), json!(7), json!(2)]
    );
    // WHEN a CSV file restocks one, creates one and has a bad row
    let csv = dir.join("restock.csv");
    std::fs::write(
        &csv,
        "sku,name,stock,per_user_limit\nCUP-1,Cup,10,\nMUG-1,Mug,4,1\nBAD-1,Bad,none,\n",
    )
    .expect("written");
    let csv = csv.to_string_lossy().into_owned();
    let run = flashctl(t, &["--json", "product", "import", &csv]);
    // THEN the summary says so, the failure is one line, and the exit is non-zero
    assert_eq!(counts(&run.json()), [1, 1, 0, 1], "{}", run.stdout);
    assert_eq!(run.json()["failures"][0]["line"], 4);
    run.refused("1 of 3 rows failed");
    assert_eq!(available("CUP-1"), json!(15));
    // AND importing it again adds nothing more
    flashctl(t, &["product", "import", &csv]).refused("1 of 3 rows failed");
    assert_eq!(
        [available("CUP-1"), available("MUG-1")],
        [json!(15), json!(4)]
    );
}

/// A product sold through place-order and process-orders on `store`: 5 buyers for `stock`.
async fn small_sale(store: &DynamoStore, sku: &str, stock: u32) -> Vec<OrderId> {
    flashctl(
        store.table(),
        &[
            "product",
            "put",
            sku,
            "--name",
            "Phone",
            "--stock",
            &stock.to_string(),
        ],
    )
    .ok();
    let (queue, url) = stack::test_queue(sku).await;
    let place = PlaceOrder::new(store.clone(), queue);
    let mut ids = Vec::new();
    for i in 0..5 {
        let req = Req::place_order(
            &format!("buyer-{i}"),
            &format!("{sku}-{i}"),
            &json!({"sku": sku, "quantity": 1}).to_string(),
        );
        let resp = place.handle(req.build()).await;
        assert_eq!(resp.status(), 202, "{:?}", body(&resp));
        ids.push(OrderId::parse(body(&resp)["order_id"].as_str().expect("id")).expect("id"));
    }
    let process = ProcessOrders {
        store: store.clone(),
        timeouts: FakeTimeouts::new(),
    };
    drain(
        &process,
        &stack::sqs().await,
        &url,
        1,
        10,
        Duration::from_secs(30),
    )
    .await;
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_get_sale_watch_and_reconcile_show_a_sale_as_it_stands() {
    // GIVEN a sale of 3 units to 5 buyers, decided
    let store = table().await;
    let t = store.table();
    let ids = small_sale(&store, "WATCH-1", 3).await;
    // WHEN the operator reads an order
    let order = flashctl(t, &["--json", "order", "get", ids[0].as_str()])
        .ok()
        .json();
    assert_eq!(
        (order["owner"].clone(), order["sku"].clone()),
        (json!("buyer-0"), json!("WATCH-1"))
    );
    assert!(
        ["pending", "rejected"].contains(&order["status"].as_str().unwrap_or_default()),
        "{order}"
    );
    flashctl(t, &["order", "get", &"0".repeat(32)]).refused("no order");
    // AND watches the sale: one frame
    let frame = flashctl(t, &["--json", "sale", "watch", "WATCH-1", "--once"])
        .ok()
        .json();
    assert_eq!(frame["available"], 0);
    assert_eq!(frame["shards"], json!([0]));
    assert_eq!(
        (frame["accepted"].clone(), frame["refused"].clone()),
        (json!(3), json!(2))
    );
    assert_eq!(frame["rejected_by"], json!({"sold_out": 2}));
    assert_eq!(frame["decision_ms"]["count"], 5);
    assert!(
        frame["queue"]["visible"].is_u64() && frame["dlq"]["visible"].is_u64(),
        "{frame}"
    );
    let text = flashctl(t, &["sale", "watch", "WATCH-1", "--once"])
        .ok()
        .stdout;
    println!("{text}");
    assert!(
        text.contains("0 of 3 left") && text.contains("sold_out 2") && text.contains("p99"),
        "{text}"
    );
    // AND the live view draws a frame every second until stopped
    let mut live = command(t, &["--json", "sale", "watch", "WATCH-1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("runs");
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    live.kill().expect("stopped");
    let out = live.wait_with_output().expect("output");
    let frames = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!((2..=4).contains(&frames), "{frames} frames in 3.5 s");
    // AND reconciles it: clean, exit 0
    let clean = flashctl(t, &["reconcile", "--sku", "WATCH-1"]).ok();
    assert!(clean.stdout.contains("WATCH-1: ok"), "{}", clean.stdout);
    // WHEN units appear in its shard
    store
        .client()
        .update_item()
        .table_name(t)
        .set_key(Some(flash_aws::dynamo::shard_key(
            &flash_domain::Sku::parse("WATCH-1").expect("sku"),
            0,
        )))
        .update_expression("ADD available :five")
        .expression_attribute_values(":five", AttributeValue::N("5".into()))
        .send()
        .await
        .expect("UpdateItem");
    // THEN reconcile names the product and its violation, and exits 1
    let bad = flashctl(t, &["reconcile", "--sku", "WATCH-1"]);
    assert_eq!(bad.code, 1, "{}{}", bad.stdout, bad.stderr);
    assert!(
        bad.stdout
            .contains("WATCH-1: conservation: added 3 != available 5 + held 3"),
        "{}",
        bad.stdout
    );
    let json = flashctl(t, &["--json", "reconcile"]).json();
    assert_eq!(json["summary"]["products_with_violations"], 1);
    flashctl(t, &["reconcile", "--sku", "NOPE"]).refused("no product NOPE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_redrive_moves_a_planted_message_back_and_the_order_is_then_decided() {
    // GIVEN an order whose message sits in the orders DLQ (as if processing failed 5 times)
    let store = table().await;
    let t = store.table();
    let sku = "DLQ-1";
    flashctl(
        t,
        &["product", "put", sku, "--name", "Phone", "--stock", "4"],
    )
    .ok();
    let sqs = stack::sqs().await;
    let name = unique_sku("redrive");
    let (url, dlq, _) = stack::queue_with_dlq(&sqs, &name, 30, 5).await;
    let place = PlaceOrder::new(store.clone(), SqsQueue::new(sqs.clone(), url.clone()));
    let resp = place
        .handle(
            Req::place_order(
                "alice",
                "dlq-k",
                &json!({"sku": sku, "quantity": 2}).to_string(),
            )
            .build(),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let id = body(&resp)["order_id"].as_str().expect("id").to_owned();
    let msgs = receive_batch(&sqs, &url, 10).await;
    assert_eq!(msgs.len(), 1);
    sqs.send_message()
        .queue_url(&dlq)
        .message_body(msgs[0].body().expect("body"))
        .send()
        .await
        .expect("planted");
    delete(&sqs, &url, &msgs.iter().collect::<Vec<_>>()).await;
    let queues = [
        "--orders-queue-url",
        url.as_str(),
        "--orders-dlq-url",
        dlq.as_str(),
    ];
    // WHEN the operator lists the DLQ
    let listed = flashctl(t, &[&queues[..], &["--json", "dlq", "list"]].concat())
        .ok()
        .json();
    // THEN the message is shown, and stays there
    let messages = listed["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{listed}");
    assert!(messages[0]["body"]
        .as_str()
        .unwrap_or_default()
        .contains(&id));
    let again = flashctl(t, &[&queues[..], &["--json", "dlq", "list"]].concat())
        .ok()
        .json();
    assert_eq!(again["messages"].as_array().map(Vec::len), Some(1));
    // WHEN it redrives the DLQ
    let moved = flashctl(
        t,
        &[
            &queues[..],
            &["--json", "dlq", "redrive", "--queue", "orders"],
        ]
        .concat(),
    )
    .ok()
    .json();
    // THEN one message moved back, the DLQ is empty, and process-orders decides the order
    assert_eq!(moved["moved"], 1, "{moved}");
    let empty = flashctl(t, &[&queues[..], &["--json", "dlq", "list"]].concat())
        .ok()
        .json();
    assert_eq!(empty["messages"], json!([]));
    assert!(
        queue_empty(&sqs, &dlq).await,
        "the DLQ still holds the message"
    );
    let process = ProcessOrders {
        store: store.clone(),
        timeouts: FakeTimeouts::new(),
    };
    let stats = drain(&process, &sqs, &url, 1, 10, Duration::from_secs(30)).await;
    assert_eq!((stats.messages, stats.accepted), (1, 1), "{stats:?}");
    let order = flashctl(t, &["--json", "order", "get", &id]).ok().json();
    assert_eq!(order["status"], "pending");
    // AND a queue flashctl does not know is one clear line
    flashctl(
        t,
        &[
            "dlq",
            "list",
            "--queue",
            "timeouts",
            "--timeouts-dlq-url",
            "",
        ],
    )
    .refused("not known");
}
