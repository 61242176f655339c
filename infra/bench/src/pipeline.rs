//! `pipeline`: ours, end to end. Each worker is one warm `place-order` instance (its own
//! handler and product cache, as each concurrent Lambda environment has) called in-process with
//! the API Gateway event Lambda would get; orders go to the stack's orders queue on fauxqs, and
//! the local gateway's SQS event source mapping (configured from template.yaml: batch size,
//! batching window, maximum concurrency) drains it through `process-orders` until every order
//! is decided. Then the invariant checker reads the table.

use crate::cost::{Invocations, Usage};
use crate::sale::{
    per_unit, round3, run_buyers, Answer, Decision, Design, DesignReport, Details, Percentiles,
    Run, Sale,
};
use crate::Stack;
use anyhow::{bail, Context};
use aws_sdk_dynamodb::config::retry::RetryPartition;
use aws_sim::{CapacityModel, RequestCounter};
use flash_aws::{DynamoStore, SqsQueue};
use flash_domain::invariant_check::Audit;
use flash_domain::ports::Store;
use flash_domain::{OrderStatus, Reason, Sku};
use lambda_http::{Body, Request, Response};
use local_gateway::config::GatewayConfig;
use local_gateway::event_source::{EventSource, LONG_POLL_S};
use local_gateway::functions::SqsFunction;
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const PLACE_ORDER_EVENT: &str = include_str!("../../../events/place-order.json");
const PUT_PRODUCT_EVENT: &str = include_str!("../../../events/put-product.json");
/// How often the stock is read to see when it reaches zero, and the queue to see when it is
/// drained.
const STOCK_POLL: Duration = Duration::from_millis(20);
/// Shard items read per [`STOCK_POLL`] at most: a catalog's hundreds of shards are read less
/// often, so the measuring adds no more reads to DynamoDB Local (1,000 items a second) than
/// it does for one product of 20 shards, at the price of a coarser sell-out time.
const SHARDS_PER_POLL: usize = 20;
const QUEUE_POLL: Duration = Duration::from_millis(20);

/// An API Gateway (payload 2.0) event from a fixture, with the caller's claims set as the JWT
/// authorizer passes them.
fn event(fixture: &str, sub: &str, admin: bool) -> anyhow::Result<Value> {
    let mut e: Value = serde_json::from_str(fixture)?;
    let jwt = &mut e["requestContext"]["authorizer"]["jwt"];
    jwt["claims"]["sub"] = json!(sub);
    jwt["claims"]["scope"] = json!(if admin { "flash-sale/admin" } else { "" });
    Ok(e)
}

fn with_body(mut e: Value, body: &Value) -> Value {
    let body = body.to_string();
    e["headers"]["content-length"] = json!(body.len().to_string());
    e["body"] = json!(body);
    e["isBase64Encoded"] = json!(false);
    e
}

fn request(e: &Value) -> anyhow::Result<Request> {
    lambda_http::request::from_str(&e.to_string()).context("building an API Gateway request")
}

fn response_json(resp: &Response<Body>) -> Value {
    match resp.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

struct Pipeline {
    /// One warm `place-order` per worker.
    handlers: Vec<PlaceOrder<DynamoStore, SqsQueue>>,
    /// The base SKU name; a catalog's SKUs are named from it.
    sku: String,
    sale: Sale,
    /// Each buyer's request, built before the sale opens; a buyer who comes back after a 503
    /// sends the same request again (same Idempotency-Key).
    requests: Vec<Mutex<Option<Request>>>,
}

impl Pipeline {
    /// `buyer`'s order of one unit of the SKU they want.
    fn buyer_event(sale: &Sale, base: &str, buyer: usize) -> anyhow::Result<Value> {
        let sku = sale.catalog.sku(base, sale.choice(buyer));
        let sku = sku.as_str();
        let mut e = event(PLACE_ORDER_EVENT, &crate::hot::buyer_user(buyer), false)?;
        e["headers"]["idempotency-key"] = json!(crate::hot::buyer_key(sku, buyer));
        Ok(with_body(e, &json!({"sku": sku, "quantity": 1})))
    }
}

impl Design for Pipeline {
    async fn buy(&self, worker: usize, buyer: usize, _run: &Run) -> Answer {
        let prebuilt = self.requests[buyer].lock().ok().and_then(|mut r| r.take());
        let req = match prebuilt {
            Some(r) => r,
            None => match Self::buyer_event(&self.sale, &self.sku, buyer).and_then(|e| request(&e))
            {
                Ok(r) => r,
                Err(_) => return Answer::Decided(Decision::Refused("bad_request")),
            },
        };
        let resp = self.handlers[worker].handle(req).await;
        let status = resp.status().as_u16();
        let body = response_json(&resp);
        let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
        match status {
            202 => Answer::Decided(Decision::Queued),
            409 if code == "sold_out" => Answer::Decided(Decision::SoldOut),
            429 | 500..=599 => Answer::Unavailable(format!("{status} {code}")),
            _ => Answer::Decided(Decision::Refused(match code.as_str() {
                "sale_not_open" => "sale_not_open",
                _ => "unexpected_answer",
            })),
        }
    }
}

pub async fn run(
    stack: &Stack,
    sale: &Sale,
    model: &CapacityModel,
    sku: String,
    shards: Option<u32>,
) -> anyhow::Result<(DesignReport, Details)> {
    // The functions' DynamoDB traffic is counted and goes through the capacity model; their SQS
    // traffic (place-order's sends, the event source's receives and deletes, process-orders'
    // hand-backs and payment timeouts) is counted. Reads for measuring use a plain client.
    let counter = crate::hot::counter(model);
    let modelled = crate::hot::dynamo_sdk(&counter).await;
    let sqs_counter = RequestCounter::new();
    let sqs_sdk = aws_sim::judged_sdk_config(stack.sdk.clone(), sqs_counter.clone());
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&modelled)
            .retry_partition(RetryPartition::new("bench-pipeline"))
            .build(),
    );
    // No rate limit: each buyer orders once, so it would only add a write per order that the
    // other designs do not pay (see the README for what it costs when on).
    // Write stats on: the report gives the pipeline's write requests and units.
    let store = DynamoStore::new(client, &stack.table).with_write_stats();
    let write_stats = store
        .stats()
        .cloned()
        .context("the bench store counts its writes")?;
    let plain_store = DynamoStore::from_config(&stack.sdk, &stack.table);
    let queue = SqsQueue::from_config(&sqs_sdk, &stack.queue_url);
    let sqs = aws_sdk_sqs::Client::new(&stack.sdk);
    if queue_depth(&sqs, &stack.queue_url).await? != 0 {
        bail!("the orders queue is not empty; start from a fresh stack (make bench does)");
    }

    // The products, through the products function as an admin would create them; `shards`
    // sets the first (hot) one's.
    let products = products::Products::new(store.clone());
    let catalog = &sale.catalog;
    let names: Vec<String> = (0..catalog.skus()).map(|i| catalog.sku(&sku, i)).collect();
    for (i, name) in names.iter().enumerate() {
        let mut spec = json!({"name": "Bench phone", "stock": catalog.stocks[i]});
        if let Some(n) = shards.filter(|_| i == 0) {
            spec["shards"] = json!(n);
        }
        let mut put = with_body(event(PUT_PRODUCT_EVENT, "bench-admin", true)?, &spec);
        put["pathParameters"]["sku"] = json!(name);
        put["rawPath"] = json!(format!("/products/{name}"));
        put["requestContext"]["http"]["path"] = json!(format!("/products/{name}"));
        let created = products.handle(request(&put)?).await;
        if created.status() != 201 {
            bail!(
                "creating {name} answered {}: {}",
                created.status(),
                response_json(&created)
            );
        }
    }
    let sku_ids = names
        .iter()
        .map(|n| Sku::parse(n))
        .collect::<Result<Vec<_>, _>>()?;
    let created = plain_store.get_products(&sku_ids).await?;
    let product = created
        .get(&sku_ids[0])
        .cloned()
        .context("the product just created is missing")?;
    if created.len() != sku_ids.len() {
        bail!(
            "{} of {} products are missing",
            sku_ids.len() - created.len(),
            sku_ids.len()
        );
    }

    // The SQS event source mapping of template.yaml, as the local gateway runs it.
    let gateway = GatewayConfig::load(&stack.state)?;
    let mapping = gateway
        .event_source_mappings
        .iter()
        .find(|m| m.binary == "process-orders")
        .cloned()
        .context("gateway.json has no event source mapping for process-orders")?;
    if mapping.queue_url != stack.queue_url {
        bail!(
            "the mapping reads {}, place-order sends to {}",
            mapping.queue_url,
            stack.queue_url
        );
    }
    let (batch_size, window_s, max_concurrency) = (
        mapping.batch_size,
        mapping.batching_window_s,
        mapping.max_concurrency,
    );
    // As deployed, process-orders also schedules each accepted order's payment timeout.
    let timeouts = flash_aws::SqsTimeouts::from_config(
        &sqs_sdk,
        flash_aws::config::payment_timeouts_queue_url(&flash_aws::Env::process())?,
    );
    // Failed records are handed back to the queue they came from, as deployed.
    let source = SqsQueue::from_config(&sqs_sdk, &mapping.queue_url);
    let function = SqsFunction::ProcessOrders(
        ProcessOrders {
            store: store.clone(),
            timeouts,
        },
        source,
    );
    let poller_client = local_gateway::event_source::poller_client(&sqs_sdk);
    let source = Arc::new(EventSource::new(
        mapping,
        poller_client,
        Arc::new(function),
        &gateway.region,
    ));
    let (stop, stopped) = watch::channel(false);
    let pollers = source.clone().spawn(&stopped);

    let requests = (0..sale.buyers)
        .map(|b| {
            Pipeline::buyer_event(sale, &sku, b)
                .and_then(|e| request(&e))
                .map(|r| Mutex::new(Some(r)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let design = Arc::new(Pipeline {
        handlers: (0..sale.concurrency)
            .map(|_| PlaceOrder::new(store.clone(), queue.clone()))
            .collect(),
        sku: sku.clone(),
        sale: sale.clone(),
        requests,
    });

    let before = model.stats();
    let writes_before = write_stats.snapshot();
    let (counted_before, sqs_before) = (counter.counts(), sqs_counter.counts());
    let invoked_before = source.invocations();
    let cpu_before = CpuTimes::read(&stack.state);
    let run = Run::start_catalog(catalog.skus());
    let done = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_stock(
        plain_store.clone(),
        sku_ids
            .iter()
            .enumerate()
            .filter_map(|(i, s)| created.get(s).map(|p| (i, p.clone())))
            .collect(),
        run.clone(),
        done.clone(),
    ));
    let outcomes = run_buyers(design.clone(), sale, &run).await;
    let deadline = run.started() + sale.timeout;
    let mut drained = None;
    while Instant::now() < deadline {
        if queue_depth(&sqs, &stack.queue_url).await? == 0 {
            drained = Some(run.elapsed());
            break;
        }
        tokio::time::sleep(QUEUE_POLL).await;
    }
    done.store(true, Relaxed);
    let cpu = CpuTimes::read(&stack.state).cores_since(&cpu_before, run.elapsed());
    let _ = watcher.await;
    let after = model.stats();
    let writes = write_stats.snapshot();
    let _ = stop.send(true);
    for p in pollers {
        let _ = tokio::time::timeout(Duration::from_secs(LONG_POLL_S as u64 + 5), p).await;
    }

    let (invocations, billed_ms) = source.invocations();
    let mut requests = crate::cost::since(&counter.counts(), &counted_before);
    requests.extend(crate::cost::since(&sqs_counter.counts(), &sqs_before));

    // One scan audits every SKU of the sale.
    let audits: Vec<Audit> = flash_aws::dynamo::ledger::audit_many(&plain_store, &sku_ids).await?;
    if audits.len() != names.len() {
        bail!(
            "the audit found {} of the sale's {} SKUs",
            audits.len(),
            names.len()
        );
    }
    let per_sku = outcomes.per_sku(sale);
    let by_name: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let (mut sold, mut stranded, mut oversold, mut available, mut queued_left) = (0, 0, 0, 0, 0);
    let (mut sold_out_after_queue, mut violations, mut decision_ms) = (0, Vec::new(), Vec::new());
    for a in &audits {
        let refused_at_api = by_name
            .get(a.sku.as_str())
            .and_then(|&i| per_sku.get(i))
            .map_or(0, |&(_, refused)| refused);
        sold += a.units_held;
        oversold += a.oversold();
        available += a.available;
        queued_left += a.undecided();
        sold_out_after_queue += a.rejected(Reason::SoldOut);
        // The audit sees orders refused after they were queued; a 409 at the API leaves no
        // order, so stock left behind a 409 counts as stranded here.
        stranded += if refused_at_api > 0 && a.available > 0 {
            a.available as u64
        } else {
            a.stranded()
        };
        violations.extend(a.violations.iter().map(|v| format!("{}: {v}", a.sku)));
        decision_ms.extend(
            a.orders
                .iter()
                .filter(|o| o.status != OrderStatus::Queued)
                .map(|o| (o.updated_at - o.created_at) as f64),
        );
    }
    let refused_at_api = outcomes.count(|d| *d == Decision::SoldOut) as u64;
    let queued = outcomes.count(|d| *d == Decision::Queued) as u64;
    let undecided = outcomes.undecided as u64 + queued_left as u64;
    let all_decided = drained
        .filter(|_| undecided == 0)
        .map(|d| d.max(outcomes.last_answer));
    let write_units = after.write_units_admitted - before.write_units_admitted;
    let stock_item_writes = writes.stock_item_writes - writes_before.stock_item_writes;
    // The admission phase: from the start until the last order was accepted (202).
    let last_accepted = outcomes
        .decisions
        .iter()
        .filter(|(d, _)| *d == Decision::Queued)
        .map(|(_, at)| *at)
        .max();
    let mut lambda = BTreeMap::new();
    lambda.insert(
        "place-order".to_owned(),
        Invocations::of(
            "place-order",
            outcomes.call_ms.len() as u64,
            outcomes.call_ms.iter().sum(),
        ),
    );
    lambda.insert(
        "process-orders".to_owned(),
        Invocations::of(
            "process-orders",
            invocations - invoked_before.0,
            billed_ms - invoked_before.1,
        ),
    );
    let usage = Usage {
        api_requests: outcomes.call_ms.len() as u64,
        lambda,
        requests,
        write_units,
        estimated_empty_receives: max_concurrency as u64
            * (all_decided.unwrap_or(run.elapsed()).as_secs_f64() / crate::cost::LONG_POLL_S).ceil()
                as u64,
    };
    let (demand_met_s, sellout_lag_s) = outcomes.sellout_lag(sale, &run);
    let report = DesignReport {
        sellout_s: run.sellout().map(|d| round3(d.as_secs_f64())),
        demand_met_s,
        sellout_lag_s,
        all_decided_s: all_decided.map(|d| round3(d.as_secs_f64())),
        decided_s: all_decided.map(|d| round3(d.as_secs_f64())),
        accepted_orders_per_s: all_decided.map(|d| round3(queued as f64 / d.as_secs_f64())),
        decision_ms: Percentiles::of(decision_ms),
        orders_per_s: all_decided.map(|d| round3(sale.buyers as f64 / d.as_secs_f64())),
        oversold,
        stranded,
        undecided,
        write_units_per_sold_unit: per_unit(write_units, sold).filter(|_| crate::hot::model_on()),
        stock_item_writes_per_sold_unit: per_unit(stock_item_writes as f64, sold),
        throttles: after.throttles - before.throttles,
        conflicts: after.conflicts - before.conflicts,
    };
    let mut refused = outcomes.refusals();
    refused.remove("sold_out");
    refused.insert("sold_out_at_api_409".into(), refused_at_api);
    refused.insert("sold_out_after_queue".into(), sold_out_after_queue as u64);
    let last_decision_ms = audits
        .iter()
        .flat_map(|a| a.orders.iter().map(|o| o.updated_at))
        .max();
    let dlq = match &stack.dlq_url {
        Some(url) => Some(queue_depth(&sqs, url).await?),
        None => None,
    };
    let mut notes = std::collections::BTreeMap::new();
    notes.insert("shards".into(), json!(product.shards));
    notes.insert("accepted_202".into(), json!(queued));
    notes.insert(
        "last_accepted_s".into(),
        json!(last_accepted.map(|d| round3(d.as_secs_f64()))),
    );
    // What the local ceiling measures (a conditional put and a send per order), as achieved:
    // orders accepted per second of the admission phase.
    notes.insert(
        "accepted_202_per_s".into(),
        json!(last_accepted.map(|d| round3(queued as f64 / d.as_secs_f64()))),
    );
    // Every answer the API gave (most of them 409s that write nothing) per second.
    notes.insert(
        "answered_per_s".into(),
        json!(round3(
            outcomes.decisions.len() as f64 / outcomes.last_answer.as_secs_f64().max(1e-3)
        )),
    );
    notes.insert(
        "api_answers_done_s".into(),
        json!(round3(outcomes.last_answer.as_secs_f64())),
    );
    notes.insert(
        "queue_drained_s".into(),
        json!(drained.map(|d| round3(d.as_secs_f64()))),
    );
    notes.insert(
        "event_source".into(),
        json!({"batch_size": batch_size, "batching_window_s": window_s, "max_concurrency": max_concurrency}),
    );
    notes.insert(
        "units_per_stock_write".into(),
        json!(per_unit(sold as f64, stock_item_writes)),
    );
    notes.insert(
        "dynamodb_consumed_write_units_per_sold_unit".into(),
        json!(per_unit(
            writes.write_units - writes_before.write_units,
            sold
        )),
    );
    notes.insert(
        "dynamodb_write_requests".into(),
        json!(writes.write_requests - writes_before.write_requests),
    );
    notes.insert(
        "last_decision_updated_at_s".into(),
        json!(last_decision_ms.map(|t| round3((t - run_started_ms(&run)) as f64 / 1000.0))),
    );
    notes.insert("dlq_messages".into(), json!(dlq));
    notes.insert("cpu_cores_used".into(), json!(cpu));
    let details = Details {
        sku,
        skus: names.len(),
        sold,
        stock_left: available,
        refused,
        undecided,
        unavailable_answers: outcomes.unavailable.clone(),
        write_units,
        stock_item_writes,
        notes,
        violations,
        usage,
    };
    Ok((report, details))
}

/// The wall-clock milliseconds at which `run` started.
fn run_started_ms(run: &Run) -> i64 {
    flash_domain::clock::now_ms() - run.elapsed().as_millis() as i64
}

/// Reads the products' shards until each holds nothing, reporting each product as it runs
/// out; the last one marks the sell-out. Nothing returns stock during the bench, so a product
/// seen empty is read no more.
async fn watch_stock(
    store: DynamoStore,
    mut products: Vec<(usize, flash_domain::Product)>,
    run: Arc<Run>,
    done: Arc<AtomicBool>,
) {
    while !done.load(Relaxed) && !products.is_empty() {
        let wanted: Vec<&flash_domain::Product> = products.iter().map(|(_, p)| p).collect();
        if let Ok(shards) = store.read_shards_of(&wanted).await {
            products.retain(|(i, p)| {
                let empty = shards
                    .get(&p.sku)
                    .is_some_and(|s| !s.is_empty() && s.iter().all(|s| s.available == 0));
                if empty {
                    run.sku_sold_out(*i);
                }
                !empty
            });
        }
        let keys: usize = products.iter().map(|(_, p)| p.shards as usize).sum();
        tokio::time::sleep(STOCK_POLL * keys.div_ceil(SHARDS_PER_POLL).max(1) as u32).await;
    }
}

/// CPU time (user + system) of this process, which runs the functions and the buyers, and of
/// the emulators, read from `/proc`: where the pipeline's time goes on this machine.
struct CpuTimes(Vec<(&'static str, Option<u64>)>);

impl CpuTimes {
    /// `/proc` counts in USER_HZ, 100 a second on Linux.
    const TICKS_PER_S: f64 = 100.0;

    fn read(state: &std::path::Path) -> Self {
        let pid = |name: &str| {
            std::fs::read_to_string(state.join("pids").join(format!("{name}.pid")))
                .ok()
                .map(|p| p.trim().to_owned())
        };
        Self(vec![
            ("bench_and_functions", Self::ticks("self")),
            (
                "dynamodb_local",
                pid("dynamodb").and_then(|p| Self::ticks(&p)),
            ),
            ("fauxqs", pid("fauxqs").and_then(|p| Self::ticks(&p))),
        ])
    }

    fn ticks(pid: &str) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }

    /// Cores each process kept busy on average over `wall`.
    fn cores_since(&self, before: &Self, wall: Duration) -> serde_json::Map<String, Value> {
        self.0
            .iter()
            .zip(&before.0)
            .map(|((name, now), (_, then))| {
                let cores = now.zip(*then).map(|(n, t)| {
                    round3(n.saturating_sub(t) as f64 / Self::TICKS_PER_S / wall.as_secs_f64())
                });
                ((*name).to_owned(), json!(cores))
            })
            .collect()
    }
}

/// Messages in the queue, visible and in flight. The delayed re-drive copies (15 minutes out)
/// are not waited for: every order they name is decided by then.
async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<u64> {
    let (visible, in_flight) = flash_aws::sqs::queue_depth(sqs, url)
        .await
        .context("GetQueueAttributes")?;
    Ok(visible + in_flight)
}
