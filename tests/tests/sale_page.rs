//! The live sale page in a real browser: Debian's headless Chromium (`make tools` installs
//! it) loads `/_local/sale` from the local gateway during a small sale and after it, runs
//! the page's script, and the numbers it renders are checked against the API's figures for
//! the same instant: units available (`GET /products/{sku}`) and orders decided (`GET
//! /orders/{id}` of every order). During the sale the page's reading must lie between the
//! API's readings just before and just after it; once every order is decided they must be
//! equal. Chromium then saves a screenshot under `.local/reports/sale-page.png`.

use flash_tests::gateway::{self, Gateway};
use flash_tests::stack;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const STOCK: u64 = 20;
const BUYERS: usize = 40;

fn chromium() -> PathBuf {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.expect("chromium not found on PATH: `make tools` installs Debian's chromium package")
}

/// Chromium, headless, with the page's script given `budget_ms` of (virtual) time to run.
fn browser(budget_ms: u32) -> Command {
    let mut command = Command::new(chromium());
    command.args([
        "--headless",
        // Root in a container has no user namespace for the sandbox.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        &format!("--virtual-time-budget={budget_ms}"),
    ]);
    command
}

/// Runs chromium; fails the test, with its stderr, if it fails.
fn run(command: &mut Command) -> std::process::Output {
    let out = command.output().expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The page's DOM once its script has run.
fn rendered(url: &str) -> String {
    let out = run(browser(2500).arg("--dump-dom").arg(url));
    String::from_utf8(out.stdout).expect("a UTF-8 DOM")
}

/// The text of the element with `id` in `dom`.
fn field<'a>(dom: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\">");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no element {id} in the page:\n{dom}"))
        + marker.len();
    let end = dom[start..].find('<').map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

fn number(dom: &str, id: &str) -> u64 {
    let text = field(dom, id);
    text.parse().unwrap_or_else(|_| {
        panic!("{id} shows {text:?}, not a number; the page's script did not render:\n{dom}")
    })
}

struct Sale<'a> {
    gateway: &'a Gateway,
    admin: String,
    sku: String,
    orders: Mutex<Vec<String>>,
}

impl Sale<'_> {
    fn available(&self) -> u64 {
        let (status, body) = self.gateway.call(
            "GET",
            &format!("/products/{}", self.sku),
            Some(&self.admin),
            None,
        );
        assert_eq!(status, 200, "{body}");
        body["available"].as_u64().expect("available")
    }

    /// Orders decided so far, by the API, and how many are still queued.
    fn decided(&self) -> (u64, u64) {
        let ids = self.orders.lock().expect("orders").clone();
        let mut decided = 0;
        for id in &ids {
            let (status, body) =
                self.gateway
                    .call("GET", &format!("/orders/{id}"), Some(&self.admin), None);
            assert_eq!(status, 200, "{body}");
            decided += u64::from(body["status"] != "queued");
        }
        (decided, ids.len() as u64 - decided)
    }
}

#[test]
fn the_sale_page_renders_the_apis_stock_and_decisions_in_a_real_browser() {
    // GIVEN the local gateway, a product of 20 units and 40 buyers
    let gateway = Gateway::start("sale-page");
    let admin = gateway.token("sale-page-admin", true, 3600);
    let sku = stack::unique_sku("PAGE");
    let (status, body) = gateway.call(
        "PUT",
        &format!("/products/{sku}"),
        Some(&admin),
        Some(&json!({"name": "Page phone", "stock": STOCK})),
    );
    assert_eq!(status, 201, "{body}");
    let buyers: Vec<String> = (0..BUYERS)
        .map(|i| gateway.token(&format!("{sku}-buyer-{i}"), false, 3600))
        .collect();
    let sale = Sale {
        gateway: &gateway,
        admin,
        sku: sku.clone(),
        orders: Mutex::new(Vec::new()),
    };
    let page = format!("http://127.0.0.1:{}/_local/sale", gateway.port);
    std::thread::scope(|s| {
        // WHEN the buyers order while the page is loaded
        s.spawn(|| {
            for token in &buyers {
                let (status, body) = sale.gateway.call(
                    "POST",
                    "/orders",
                    Some(token),
                    Some(&json!({"sku": sale.sku, "quantity": 1})),
                );
                // Once the product is flagged sold out, an order is refused before it is
                // written (409 sold_out): no order, nothing to decide.
                if status == 409 && body["error"]["code"] == "sold_out" {
                    continue;
                }
                assert_eq!(status, 202, "{body}");
                let id = body["order_id"].as_str().expect("order_id").to_owned();
                sale.orders.lock().expect("orders").push(id);
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let (available_before, (decided_before, _)) = (sale.available(), sale.decided());
        let dom = rendered(&format!("{page}?sku={sku}"));
        let (decided_after, _) = sale.decided();
        let available_after = sale.available();
        // THEN mid-sale the page's figures lie between the API's before and after it
        assert_eq!(field(&dom, "sku"), sku);
        let (available, decided) = (number(&dom, "available"), number(&dom, "decided"));
        println!(
            "mid-sale: available API {available_before}..{available_after}, page {available}; \
             decided API {decided_before}..{decided_after}, page {decided}"
        );
        assert!(
            (available_after..=available_before).contains(&available),
            "page shows {available} available, the API {available_before} then {available_after}"
        );
        assert!(
            (decided_before..=decided_after).contains(&decided),
            "page shows {decided} decided, the API {decided_before} then {decided_after}"
        );
    });
    // AND once every order is decided, the page (without ?sku: the product created last)
    // shows exactly the API's figures
    let deadline = Instant::now() + Duration::from_secs(30);
    while sale.decided().1 > 0 {
        assert!(Instant::now() < deadline, "orders still queued after 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (available, (decided, _)) = (sale.available(), sale.decided());
    let dom = rendered(&page);
    assert_eq!(
        field(&dom, "sku"),
        sku,
        "the page did not pick the newest product"
    );
    assert_eq!(number(&dom, "available"), available);
    assert_eq!(number(&dom, "decided"), decided);
    let placed = sale.orders.lock().expect("orders").len() as u64;
    assert_eq!(decided, placed);
    assert_eq!(number(&dom, "accepted"), STOCK);
    assert_eq!(number(&dom, "refused"), placed - STOCK);
    println!("settled: available {available}, decided {decided}; the page shows the same");
    // AND a screenshot of it is saved
    let reports = gateway::workspace().join(".local/reports");
    std::fs::create_dir_all(&reports).expect("reports directory");
    let shot = reports.join("sale-page.png");
    let _ = std::fs::remove_file(&shot);
    run(browser(2500)
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1100,900")
        .arg(format!("{page}?sku={sku}")));
    let size = Path::new(&shot).metadata().map_or(0, |m| m.len());
    assert!(
        size > 10_000,
        "no screenshot at {} ({size} bytes)",
        shot.display()
    );
    println!("screenshot: {}", shot.display());
}
