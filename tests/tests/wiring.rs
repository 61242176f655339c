//! Each function is built by one constructor from its environment, which its `main.rs` and the
//! local gateway both call: a bad setting stops it at start-up, naming the variable.

use advance_order::AdvanceOrder;
use expire_orders::ExpireOrders;
use flash_aws::{Aws, ConfigError, Env};
use get_order::GetOrder;
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use products::Products;
use reconcile::Reconcile;

/// SDK clients that are never called: building a function makes no request.
fn aws() -> Aws {
    Aws::new(
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build(),
    )
}

/// Every variable template.yaml gives the functions, with local values.
fn complete() -> Env {
    Env::from_iter([
        ("TABLE_NAME", "OrdersTable"),
        (
            "ORDERS_QUEUE_URL",
            "http://127.0.0.1:1/000000000000/OrdersQueue",
        ),
        (
            "PAYMENT_TIMEOUTS_QUEUE_URL",
            "http://127.0.0.1:1/000000000000/PaymentTimeoutsQueue",
        ),
        ("REDRIVE_DELAY_SECONDS", "900"),
        ("RUST_LOG", "info"),
    ])
}

/// Each function's constructor on `env`: `Err` with its message where it refuses.
fn start_all(env: &Env) -> Vec<(&'static str, Result<(), String>)> {
    let aws = aws();
    let e = |r: Result<(), ConfigError>| r.map_err(|e| e.to_string());
    vec![
        ("place-order", e(PlaceOrder::from_env(&aws, env).map(drop))),
        ("get-order", e(GetOrder::from_env(&aws, env).map(drop))),
        (
            "advance-order",
            e(AdvanceOrder::from_env(&aws, env).map(drop)),
        ),
        ("products", e(Products::from_env(&aws, env).map(drop))),
        (
            "process-orders",
            e(ProcessOrders::from_env(&aws, env).map(drop)),
        ),
        (
            "expire-orders",
            e(ExpireOrders::from_env(&aws, env).map(drop)),
        ),
        ("reconcile", e(Reconcile::from_env(&aws, env).map(drop))),
    ]
}

#[test]
fn every_function_starts_from_the_environment_the_template_declares() {
    for (function, started) in start_all(&complete()) {
        assert_eq!(started, Ok(()), "{function}");
    }
}

#[test]
fn a_missing_table_name_stops_every_function_at_start_up_naming_the_variable() {
    let mut env = complete();
    env.set("TABLE_NAME", "");
    for (function, started) in start_all(&env) {
        assert_eq!(
            started,
            Err("environment variable TABLE_NAME is missing or empty".to_owned()),
            "{function}"
        );
    }
}

#[test]
fn a_missing_queue_url_stops_the_functions_that_use_it() {
    let mut env = complete();
    env.set("PAYMENT_TIMEOUTS_QUEUE_URL", "");
    let refused: Vec<_> = start_all(&env)
        .into_iter()
        .filter(|(_, started)| started.is_err())
        .map(|(function, _)| function)
        .collect();
    assert_eq!(refused, ["process-orders", "expire-orders"]);
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_variable_and_why() {
    let aws = aws();
    for (name, value, why) in [
        ("RATE_LIMIT_CAPACITY", "ten", "invalid digit"),
        ("RATE_LIMIT_PER_SECOND", "-1", ""),
        ("BREAKER_FAILURES", "0", "must be at least 1"),
        ("BREAKER_COOL_DOWN_SECONDS", "0", "above 0"),
        ("REDRIVE_DELAY_SECONDS", "901", "SQS's longest delay"),
    ] {
        // GIVEN the template's environment with one bad setting
        let mut env = complete();
        env.set(name, value);
        // WHEN place-order starts
        let Err(e) = PlaceOrder::from_env(&aws, &env) else {
            panic!("{name}={value} was accepted");
        };
        // THEN it stops, naming the variable and why
        let message = e.to_string();
        assert!(
            message.starts_with(&format!("environment variable {name} is invalid: ")),
            "{message}"
        );
        assert!(message.contains(why), "{message}");
    }
}
