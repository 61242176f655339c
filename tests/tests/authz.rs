//! The authorization matrix, through the local gateway as a client sees it: every route of
//! `openapi.yaml` (each action of `POST /orders/{order_id}/{action}` on its own row) called by
//! each kind of caller — no token, a forged token (admin claims under another token's
//! signature), an expired token, the buyer who owns the order, another buyer, an admin —
//! answers exactly the status `API.md` gives: 401 without a valid token, 403 for a buyer on an
//! admin route, 404 for another caller's order on every route, 2xx otherwise. Every refused
//! call writes nothing: the gateway's DynamoDB write counter does not move and the order or
//! product it aimed at reads back unchanged. The matrix is printed as it ran
//! (`-- --nocapture`).
//!
//! The gateway is `target/debug/local-gateway` (built by `cargo build --workspace`), started
//! here on a free loopback port for the stack of `STACK_ENV` and stopped, by its pid, when the
//! test ends. It runs the template's SQS event source too, so orders get decided; the test
//! waits for every decision before it measures a refused call, so no write of the processor
//! lands in a measurement.

use flash_tests::gateway::{self, Gateway};
use flash_tests::stack;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const CALLERS: [Caller; 6] = [
    Caller::NoToken,
    Caller::BadSignature,
    Caller::Expired,
    Caller::Buyer,
    Caller::OtherBuyer,
    Caller::Admin,
];
const ACTIONS: [&str; 5] = ["pay", "cancel", "refund", "ship", "confirm"];

#[derive(Clone, Copy, PartialEq)]
enum Caller {
    NoToken,
    /// An admin's claims under the signature of the buyer's token.
    BadSignature,
    Expired,
    /// A buyer: for an order route, the order's owner.
    Buyer,
    OtherBuyer,
    Admin,
}

impl Caller {
    fn name(self) -> &'static str {
        match self {
            Caller::NoToken => "no token",
            Caller::BadSignature => "bad signature",
            Caller::Expired => "expired",
            Caller::Buyer => "buyer (owner)",
            Caller::OtherBuyer => "other buyer",
            Caller::Admin => "admin",
        }
    }
}

#[derive(Clone, Copy)]
enum Route {
    PutProduct,
    GetProduct,
    PlaceOrder,
    GetOrder,
    Action(&'static str),
}

impl Route {
    fn all() -> Vec<Route> {
        let mut routes = vec![
            Route::PutProduct,
            Route::GetProduct,
            Route::PlaceOrder,
            Route::GetOrder,
        ];
        routes.extend(ACTIONS.map(Route::Action));
        routes
    }

    /// The operation of `openapi.yaml` this row exercises.
    fn operation(self) -> (&'static str, &'static str) {
        match self {
            Route::PutProduct => ("PUT", "/products/{sku}"),
            Route::GetProduct => ("GET", "/products/{sku}"),
            Route::PlaceOrder => ("POST", "/orders"),
            Route::GetOrder => ("GET", "/orders/{order_id}"),
            Route::Action(_) => ("POST", "/orders/{order_id}/{action}"),
        }
    }

    fn label(self) -> String {
        match self {
            Route::Action(action) => format!("POST /orders/{{order_id}}/{action}"),
            other => {
                let (method, path) = other.operation();
                format!("{method} {path}")
            }
        }
    }

    /// The status order a row's order must be in for its owner's call to succeed.
    fn needs(self) -> Option<&'static str> {
        match self {
            Route::GetOrder | Route::Action("pay") | Route::Action("cancel") => Some("pending"),
            Route::Action("refund") | Route::Action("ship") => Some("paid"),
            Route::Action(_) => Some("shipped"),
            _ => None,
        }
    }

    /// What API.md promises this caller, and for a success the status the order ends in.
    fn expected(self, caller: Caller) -> (u16, Option<&'static str>) {
        match (caller, self) {
            (Caller::NoToken | Caller::BadSignature | Caller::Expired, _) => (401, None),
            (Caller::Buyer | Caller::OtherBuyer, Route::PutProduct) => (403, None),
            (Caller::Admin, Route::PutProduct) => (201, None),
            (_, Route::GetProduct) => (200, None),
            (_, Route::PlaceOrder) => (202, Some("queued")),
            (Caller::OtherBuyer, _) => (404, None),
            (Caller::Buyer, Route::Action("ship")) => (403, None),
            (_, Route::GetOrder) => (200, Some("pending")),
            (_, Route::Action(action)) => (200, Some(after(action))),
        }
    }
}

fn after(action: &str) -> &'static str {
    match action {
        "pay" => "paid",
        "cancel" | "refund" => "canceled",
        "ship" => "shipped",
        _ => "completed",
    }
}

/// The routes `openapi.yaml` declares, as (METHOD, path) pairs.
fn openapi_operations() -> BTreeSet<(String, String)> {
    let spec =
        std::fs::read_to_string(gateway::workspace().join("openapi.yaml")).expect("openapi.yaml");
    let mut operations = BTreeSet::new();
    let mut path = None;
    for line in spec
        .lines()
        .skip_while(|l| *l != "paths:")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
    {
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!("/{}", p.trim_end_matches(':')));
        } else if let (Some(method), Some(path)) = (line.strip_prefix("    "), &path) {
            let method = method.trim_end_matches(':');
            if ["get", "put", "post", "patch", "delete"].contains(&method) {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

// --- the matrix -------------------------------------------------------------------------

/// One cell's world: its own owner (so no caller's rate limit spans cells) and, for an order
/// route, its own order in the state the owner's call needs.
struct Cell {
    route: Route,
    caller: Caller,
    owner: String,
    owner_token: String,
    expired_token: String,
    order_id: Option<String>,
    path: String,
}

struct World {
    gateway: Gateway,
    run: String,
    sku: String,
    admin: String,
    other: String,
}

impl World {
    /// Places an order for `owner` and returns its id once the processor has decided it.
    fn place(&self, owner_token: &str) -> String {
        let (status, body) = self.gateway.call(
            "POST",
            "/orders",
            Some(owner_token),
            Some(&json!({"sku": self.sku, "quantity": 1})),
        );
        assert_eq!(status, 202, "place an order: {body}");
        body["order_id"].as_str().expect("order_id").to_owned()
    }

    fn order(&self, id: &str) -> Value {
        let (status, body) =
            self.gateway
                .call("GET", &format!("/orders/{id}"), Some(&self.admin), None);
        assert_eq!(status, 200, "read order {id}: {body}");
        body
    }

    fn wait_decided(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let order = self.order(id);
            if order["status"] != "queued" {
                return order;
            }
            assert!(
                Instant::now() < deadline,
                "order {id} still queued after 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn advance(&self, id: &str, action: &str, token: &str, to: &str) {
        let (status, body) =
            self.gateway
                .call("POST", &format!("/orders/{id}/{action}"), Some(token), None);
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some(to)),
            "{action} {id}: {body}"
        );
    }

    fn product(&self, sku: &str) -> (u16, Value) {
        self.gateway
            .call("GET", &format!("/products/{sku}"), Some(&self.admin), None)
    }
}

#[test]
fn every_route_answers_each_caller_as_api_md_says_and_refusals_write_nothing() {
    // GIVEN the local gateway, a product on sale, and tokens for every kind of caller
    let gateway = Gateway::start("authz");
    let run = format!("{:08x}", rand::random::<u32>());
    let admin = gateway.token(&format!("authz-{run}-admin"), true, 3600);
    let other = gateway.token(&format!("authz-{run}-other"), false, 3600);
    let world = World {
        sku: stack::unique_sku("AUTHZ"),
        gateway,
        run,
        admin,
        other,
    };
    let (status, body) = world.gateway.call(
        "PUT",
        &format!("/products/{}", world.sku),
        Some(&world.admin),
        Some(&json!({"name": "Authz phone", "stock": 1000})),
    );
    assert_eq!(status, 201, "{body}");

    // The matrix covers every operation openapi.yaml declares, and every action.
    let covered: BTreeSet<_> = Route::all()
        .into_iter()
        .map(|r| (r.operation().0.to_owned(), r.operation().1.to_owned()))
        .collect();
    assert_eq!(
        covered,
        openapi_operations(),
        "a route of openapi.yaml has no row here"
    );

    // AND for each cell an owner of its own, with an order in the state its row needs
    let minted = Instant::now();
    let mut cells = Vec::new();
    for route in Route::all() {
        for caller in CALLERS {
            let owner = format!(
                "authz-{}-{}-{}",
                world.run,
                cells.len(),
                caller.name().replace(' ', "-")
            );
            let owner = owner.replace(['(', ')'], "");
            cells.push(Cell {
                route,
                caller,
                owner_token: world.gateway.token(&owner, false, 3600),
                expired_token: world.gateway.token(&owner, false, 0),
                owner,
                order_id: None,
                path: String::new(),
            });
        }
    }
    for cell in &mut cells {
        if cell.route.needs().is_some() {
            cell.order_id = Some(world.place(&cell.owner_token));
        }
    }
    for cell in &cells {
        let (Some(id), Some(needs)) = (&cell.order_id, cell.route.needs()) else {
            continue;
        };
        assert_eq!(
            world.wait_decided(id)["status"],
            "pending",
            "order {id} of {}",
            cell.owner
        );
        if needs != "pending" {
            world.advance(id, "pay", &cell.owner_token, "paid");
        }
        if needs == "shipped" {
            world.advance(id, "ship", &world.admin, "shipped");
        }
    }
    for (i, cell) in cells.iter_mut().enumerate() {
        cell.path = match (cell.route, &cell.order_id) {
            // A refused PUT aims at a product that does not exist: afterwards it still must not.
            (Route::PutProduct, _) => format!("/products/{}-{i}", world.sku),
            (Route::GetProduct, _) => format!("/products/{}", world.sku),
            (Route::PlaceOrder, _) => "/orders".to_owned(),
            (Route::GetOrder, Some(id)) => format!("/orders/{id}"),
            (Route::Action(action), Some(id)) => format!("/orders/{id}/{action}"),
            (_, None) => unreachable!("an order route has an order"),
        };
    }
    // The expired tokens were minted with a lifetime of 0 s; the authorizer allows no leeway.
    if let Some(rest) = Duration::from_millis(2100).checked_sub(minted.elapsed()) {
        std::thread::sleep(rest);
    }

    // WHEN each caller calls each route
    let mut failures = Vec::new();
    let mut statuses = Vec::new();
    for cell in &cells {
        let (method, _) = cell.route.operation();
        let token = match cell.caller {
            Caller::NoToken => None,
            Caller::BadSignature => {
                let (admin_claims, _) = world.admin.rsplit_once('.').expect("a JWT");
                let (_, signature) = cell.owner_token.rsplit_once('.').expect("a JWT");
                Some(format!("{admin_claims}.{signature}"))
            }
            Caller::Expired => Some(cell.expired_token.clone()),
            Caller::Buyer => Some(cell.owner_token.clone()),
            Caller::OtherBuyer => Some(world.other.clone()),
            Caller::Admin => Some(world.admin.clone()),
        };
        let body = match cell.route {
            Route::PutProduct => Some(json!({"name": "Authz phone", "stock": 5})),
            Route::PlaceOrder => Some(json!({"sku": world.sku, "quantity": 1})),
            _ => None,
        };
        let before_order = cell.order_id.as_deref().map(|id| world.order(id));
        let before_writes = world.gateway.writes();
        let (status, answer) =
            world
                .gateway
                .call(method, &cell.path, token.as_deref(), body.as_ref());
        let writes = world.gateway.writes() - before_writes;
        statuses.push(status);

        // THEN the status is the one API.md gives, and a refusal wrote nothing
        let (expected, ends_in) = cell.route.expected(cell.caller);
        let here = format!("{} as {}", cell.route.label(), cell.caller.name());
        if status != expected {
            failures.push(format!("{here}: {status} (expected {expected}) {answer}"));
        }
        if expected >= 400 {
            if answer["error"]["code"].as_str().is_none() && status != 401 {
                failures.push(format!("{here}: error body without a code: {answer}"));
            }
            if writes != 0 {
                failures.push(format!(
                    "{here}: refused, yet {writes} DynamoDB write request(s)"
                ));
            }
            if let (Some(id), Some(before)) = (&cell.order_id, &before_order) {
                let now = world.order(id);
                if &now != before {
                    failures.push(format!(
                        "{here}: refused, yet order {id} changed: {before} -> {now}"
                    ));
                }
            }
            if let Route::PutProduct = cell.route {
                let (found, product) = world.product(cell.path.trim_start_matches("/products/"));
                if found != 404 {
                    failures.push(format!(
                        "{here}: refused, yet the product exists: {product}"
                    ));
                }
            }
        } else if method != "GET" && writes == 0 {
            // Proves the counter counts, so the zeros of the refusals mean something.
            failures.push(format!(
                "{here}: succeeded without a DynamoDB write request"
            ));
        }
        // Only a success names the status its order ends in.
        if let Some(ends_in) = ends_in {
            if answer["status"] != ends_in {
                failures.push(format!(
                    "{here}: answered {answer}, expected status {ends_in}"
                ));
            }
            // A new order is decided before the next cell measures its writes.
            if let Route::PlaceOrder = cell.route {
                world.wait_decided(answer["order_id"].as_str().unwrap_or_default());
            }
        }
    }

    // The matrix as it ran.
    let width = Route::all()
        .iter()
        .map(|r| r.label().len())
        .max()
        .unwrap_or(0);
    let mut table = format!(
        "\nauthorization matrix (route x caller -> status), run {}\n",
        world.run
    );
    table.push_str(&format!("{:width$}", "route"));
    for caller in CALLERS {
        table.push_str(&format!(" | {:>13}", caller.name()));
    }
    for (i, route) in Route::all().iter().enumerate() {
        table.push_str(&format!("\n{:width$}", route.label()));
        for (j, caller) in CALLERS.iter().enumerate() {
            let status = statuses[i * CALLERS.len() + j];
            let mark = if status == route.expected(*caller).0 {
                ""
            } else {
                " !"
            };
            table.push_str(&format!(" | {:>13}", format!("{status}{mark}")));
        }
    }
    println!("{table}\n");
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
