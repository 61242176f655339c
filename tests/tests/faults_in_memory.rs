//! The fault-injection suite over the fakes: seeded, repeatable, every scenario followed by the
//! invariant checker. `FAULT_SEED` (decimal or `0x` hex) picks the run; the default is
//! `DEFAULT_SEED` (`flash_tests::fault_suite`). It prints its seed, its scenario count and the
//! fault kinds it covers before it starts, and a failure names the seed, the scenario and the
//! failpoints that fired. `FAULT_VERBOSE=1` prints each scenario's time, `FAULT_TRACE=1` each
//! batch.
//!
//! [`faults_against_the_fakes_keep_every_invariant`]: `FAKE_SCENARIOS` randomized flash
//! sales over the in-memory store and an in-memory SQS with its DLQ, on one thread. Buyers,
//! processors, admins and the payment timer run concurrently, interleaved at every port call
//! as the seed decides: a seed replays the same scenarios, faults and interleaving choices
//! (what stays the machine's: the wall clock in timestamps, and the iteration order of the
//! handlers' own hash maps). Failpoints fire before and after
//! every store call and send of every function, as errors and as crashes; the suite fails
//! unless each (function, call) it saw was hit in each of those four ways. Its other half,
//! against DynamoDB Local and fauxqs with SDK faults, is `faults_sdk.rs`.
//!
//! After every scenario: no shard negative and nothing oversold; conservation (stock added =
//! available + units held by live orders); nothing stranded when no stock came back; every
//! accepted order decided once the queue is drained; the DLQ holds exactly the poison
//! messages injected; the ledger of changes shows one deduction, at most one restore and at
//! most one payment per order, each from the status the order was in, pay only before the
//! deadline and the timeout only after; every `200` a caller got is consistent with where
//! the order ended; replays of one key answered one order; and a message redelivered long
//! after the fact changes nothing.

use flash_domain::clock::now_ms;
use flash_domain::expiry::TimeoutMessage;
use flash_domain::{Order, OrderId, OrderStatus, Reason, Sku};
use flash_tests::failpoint::{Fired, Tracer};
use flash_tests::fake::{FakeQueue, FakeStore};
use flash_tests::invariants::{check_ledger, effects};
use flash_tests::sqs_sim::{Delivery, SimQueue};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reconcile::Reconcile;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use flash_tests::fault_suite::*;
use flash_tests::fault_world::{check_answers, World};
use flash_tests::given::id_for;

// --- One in-memory scenario ------------------------------------------------------------

async fn fake_scenario(run: u64, i: usize, coverage: &mut Coverage) {
    let seed = mix(run, 1, i);
    let mut rng = StdRng::seed_from_u64(seed);
    let label = format!("FAULT_SEED={run} scenario {i} (fakes)");
    let sku = Sku::parse(&format!("FAULT-{i}")).expect("valid sku");
    let stock: u32 = rng.random_range(1..=14);
    let shards: u32 = rng.random_range(1..=3).min(stock);
    let limit: Option<u32> = rng.random_bool(0.25).then(|| rng.random_range(1..=3));
    let poison = rng.random_bool(0.15);
    let buyers_n = if poison {
        rng.random_range(10..=13)
    } else {
        rng.random_range(2..=12)
    };
    let max_q = limit.unwrap_or(3).min(3);
    let mut spec = json!({"name": "Phone", "stock": stock, "shards": shards});
    if let Some(l) = limit {
        spec["per_user_limit"] = json!(l);
    }
    let fault_free = rng.random_bool(0.08);
    let budget = if fault_free {
        0
    } else {
        rng.random_range(1..=MAX_FAULTS)
    };
    let api_budget = if fault_free {
        0
    } else {
        rng.random_range(1..=MAX_API_FAULTS)
    };
    let world = World {
        label: label.clone(),
        sku: sku.clone(),
        spec: spec.clone(),
        store: FakeStore::new(),
        sent: FakeQueue::new(),
        sqs: SimQueue::new(MAX_RECEIVES),
        timeouts: Arc::new(SimQueue::new(MAX_RECEIVES)),
        tracer: Tracer::interleaving(mix(seed, 2, 0)),
        rng: Mutex::new(StdRng::seed_from_u64(mix(seed, 3, 0))),
        fault_rate: rng.random_range(0.15..0.5),
        targets: Mutex::new(coverage.missing()),
        clients: AtomicUsize::new(0),
        outage: Mutex::new(None),
        poison: Mutex::default(),
        answers: Mutex::default(),
        accepted: Mutex::default(),
        kinds: Mutex::default(),
    };
    world.tracer.set_budget("process-orders", budget);
    world.tracer.set_budget("expire-orders", budget);
    for f in API_FUNCTIONS {
        world.tracer.set_budget(f, api_budget);
    }
    let buyers: Vec<Buyer> = (0..buyers_n)
        .map(|b| Buyer {
            user: format!("buyer-{b}"),
            key: format!("key-{i}-{b}"),
            quantity: rng.random_range(1..=max_q),
            twice: rng.random_bool(0.2),
            reuse: rng.random_bool(0.05),
            replay: rng.random_bool(0.2),
            script: SCRIPTS[rng.random_range(0..SCRIPTS.len())],
        })
        .collect();
    let restock = (!poison && rng.random_bool(0.15)).then(|| rng.random_range(1..=5));
    let outage = rng.random_bool(0.1);
    let consumers = rng.random_range(1..=3);
    let max_batch = rng.random_range(1..=10);

    // GIVEN the product, created through PUT /products (failpoints included).
    if world.put_product(&spec).await != 201 && world.store.product(&sku).is_none() {
        world.fail("the product was not created");
    }

    if poison {
        // WHEN the orders are placed first, then one batch of 10 carries a poison message
        world.clients.store(buyers.len(), Ordering::SeqCst);
        let ids: Vec<Option<OrderId>> =
            futures::future::join_all(buyers.iter().map(|b| world.buy(b))).await;
        world.poison_batch().await;
        // and the buyers act while the processors drain the rest
        world.clients.store(buyers.len(), Ordering::SeqCst);
        let w = &world;
        let scripts = buyers.iter().zip(&ids).map(|(b, id)| async move {
            if let Some(id) = id {
                script(w, b, id).await;
            }
            w.clients.fetch_sub(1, Ordering::SeqCst);
        });
        futures::join!(
            futures::future::join_all(scripts),
            world.drain(consumers, max_batch, true)
        );
    } else {
        // WHEN buyers, processors and an admin all run at once
        let extra = usize::from(restock.is_some()) + usize::from(outage);
        world.clients.store(buyers.len() + extra, Ordering::SeqCst);
        let outage_buyer = outage.then(|| Buyer {
            user: "buyer-outage".into(),
            key: format!("key-{i}-outage"),
            quantity: 1,
            twice: false,
            reuse: false,
            replay: false,
            script: Script::Idle,
        });
        if let Some(b) = &outage_buyer {
            *lock(&world.outage) = Some(id_for(&b.user, &b.key));
        }
        futures::join!(
            futures::future::join_all(buyers.iter().chain(&outage_buyer).map(|b| world.buyer(b))),
            world.drain(consumers, max_batch, true),
            async {
                if let Some(units) = restock {
                    world.restock(units).await;
                }
            }
        );
    }

    // The outage is over: the operator redrives the DLQ's valid messages, long after.
    let dead = world.sqs.take_dlq();
    let poison_ids = lock(&world.poison).clone();
    let mut poison_left = Vec::new();
    for d in dead {
        if poison_ids.contains(&d.message_id) {
            poison_left.push(d);
        } else {
            world.tally(Kind::DlqRedriveLongAfter);
            world.sqs.send(d.body);
        }
    }
    world.drain(1, 10, false).await;

    // THEN every invariant holds
    let ledger = world.tracer.ledger();
    let (state, audit) = world.audited(&sku, "");
    if audit.undecided() != 0 {
        world.fail(format!("{} accepted orders undecided", audit.undecided()));
    }
    let restored = effects(&ledger).values().any(|x| x.restored > 0);
    if !restored && restock.is_none() && audit.stranded() != 0 {
        world.fail(format!("{} units stranded: {audit:?}", audit.stranded()));
    }
    let ours: BTreeMap<OrderId, Order> = state
        .orders
        .iter()
        .filter(|(_, o)| o.sku == sku)
        .map(|(id, o)| (id.clone(), o.clone()))
        .collect();
    let problems = check_ledger(&ledger, &ours, true);
    if !problems.is_empty() {
        world.fail(format!("ledger:\n{}", problems.join("\n")));
    }
    for id in lock(&world.accepted).keys() {
        if !ours.contains_key(id) {
            world.fail(format!("order {id} was accepted (202) but is not stored"));
        }
    }
    // Every order still waiting for its payment has its timeout scheduled (one that left
    // `pending` before a redelivery could schedule it needs none).
    let scheduled: HashSet<OrderId> = world
        .timeouts
        .archive()
        .iter()
        .filter_map(|(_, b)| serde_json::from_str::<TimeoutMessage>(b).ok())
        .map(|m| m.order_id)
        .collect();
    for o in ours.values() {
        if o.status == OrderStatus::Pending && !scheduled.contains(&o.id) {
            world.fail(format!(
                "order {} is pending but its payment timeout was never scheduled",
                o.id
            ));
        }
    }
    check_answers(&world, &lock(&world.answers), &ours, Some(&ledger));
    let dlq: BTreeSet<String> = poison_left.iter().map(|d| d.message_id.clone()).collect();
    if dlq != poison_ids {
        world.fail(format!(
            "the DLQ holds {dlq:?}, expected exactly the poison {poison_ids:?}"
        ));
    }

    // AND messages redelivered long after the fact (and the DLQ's poison again) change nothing
    let before = world.store.snapshot();
    let archive = world.sqs.archive();
    let mut late: Vec<Delivery> = Vec::new();
    let picks = world.rng().random_range(1..=4);
    for _ in 0..picks {
        let (id, body) = archive[world.rng().random_range(0..archive.len())].clone();
        if !poison_ids.contains(&id) {
            late.push(Delivery {
                message_id: format!("late-{id}"),
                body,
                receives: 1,
            });
        }
    }
    late.extend(poison_left.iter().cloned());
    world.tally(Kind::LateRedelivery);
    let (failed, _) = world.process(&late, false).await;
    let expected: HashSet<String> = poison_left.iter().map(|d| d.message_id.clone()).collect();
    if failed != expected {
        world.fail(format!(
            "a late redelivery failed {failed:?}, expected {expected:?}"
        ));
    }
    if world.store.snapshot() != before {
        world.fail("a late redelivery changed the table");
    }

    // AND when every payment window closes, the timeouts (duplicated, with failpoints) cancel
    // exactly the unpaid orders and bring their stock back once.
    world.tally(Kind::TimeoutsAfterTheSale);
    // The timeouts' own queue, so a budget of its own (the race above spent little of it).
    world.tracer.set_budget("expire-orders", budget);
    // Some arrive early (a window longer than SQS's longest delay): sent again, nothing else.
    world.expire_early().await;
    let now = now_ms();
    let unpaid: Vec<Order> = world
        .store
        .orders()
        .into_iter()
        .filter(|o| o.sku == sku && o.status == OrderStatus::Pending)
        .collect();
    for mut o in unpaid.clone() {
        o.expires_at = Some(now - 1);
        world.store.seed_order(o);
    }
    world.drain_timeouts().await;
    let (state, _) = world.audited(&sku, " after the timeouts");
    for o in &unpaid {
        let now = world.order(&o.id);
        if (now.status, now.reason) != (OrderStatus::Canceled, Some(Reason::PaymentTimeout)) {
            world.fail(format!("unpaid order {} ended {:?}", o.id, now.status));
        }
    }
    let ours: BTreeMap<OrderId, Order> = state
        .orders
        .into_iter()
        .filter(|(_, o)| o.sku == sku)
        .collect();
    let problems = check_ledger(&world.tracer.ledger(), &ours, true);
    if !problems.is_empty() {
        world.fail(format!(
            "ledger after the timeouts:\n{}",
            problems.join("\n")
        ));
    }
    // AND the reconciler, reading the same table, finds nothing wrong either.
    let (summary, _) = Reconcile::new(world.store.clone())
        .run(now_ms())
        .await
        .unwrap_or_else(|e| world.fail(format!("the reconciler failed: {e}")));
    if summary.violations != 0 || summary.overdue_pending != 0 {
        world.fail(format!("the reconciler reports {summary:?}"));
    }
    let kinds = lock(&world.kinds).clone();
    coverage.absorb(&world.tracer, &kinds);
}

#[test]
fn faults_against_the_fakes_keep_every_invariant() {
    on_a_deep_stack(fake_suite);
}

fn fake_suite() {
    let run = run_seed();
    announce(&format!(
        "fault suite (in-memory store and SQS): FAULT_SEED={run}, {FAKE_SCENARIOS} scenarios; \
         fault kinds: {}; failpoints before and after every call of place-order, \
         process-orders, advance-order, get-order, products and expire-orders, as error and \
         as crash",
        Kind::ALL.map(Kind::name).join(", ")
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let mut coverage = Coverage::default();
    let started = std::time::Instant::now();
    let verbose = std::env::var_os("FAULT_VERBOSE").is_some();
    for i in 0..FAKE_SCENARIOS {
        let t = std::time::Instant::now();
        rt.block_on(fake_scenario(run, i, &mut coverage));
        if verbose {
            println!(
                "  scenario {i}: {:.0} ms",
                t.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
    let missing = coverage.missing();
    announce(&format!(
        "fault suite (in-memory): {FAKE_SCENARIOS} scenarios passed in {:.1} s; {} failpoints \
         fired over {} (function, call) steps, {} of {} (step, before/after, error/crash) \
         combinations; by kind: {}",
        started.elapsed().as_secs_f64(),
        coverage.fired_total,
        coverage.steps.len(),
        coverage.steps.len() * MODES.len() - missing.len(),
        coverage.steps.len() * MODES.len(),
        Kind::ALL
            .iter()
            .map(|k| format!("{} x{}", k.name(), coverage.kinds.get(k).unwrap_or(&0)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for &(f, op) in &coverage.steps {
        let fired = MODES
            .iter()
            .filter(|(phase, effect)| {
                coverage.fired.contains(&Fired {
                    function: f,
                    op,
                    phase: *phase,
                    effect: *effect,
                })
            })
            .count();
        println!("  failpoints at {f}/{op}: {fired} of 4 (before/after x error/crash)");
    }
    assert!(
        missing.is_empty(),
        "FAULT_SEED={run}: failpoints never fired at {missing:?}"
    );
    let absent: Vec<&str> = Kind::ALL
        .iter()
        .filter(|k| !coverage.kinds.contains_key(k))
        .map(|k| k.name())
        .collect();
    assert!(
        absent.is_empty(),
        "FAULT_SEED={run}: never exercised: {absent:?}"
    );
}
