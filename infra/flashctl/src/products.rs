//! `product put|get|list|import` and `order get`. Product writes and reads go through the
//! products function's own handler (`products::Products`, built by its `from_env`), given the
//! request API Gateway would give it for an admin, so flashctl validates and writes exactly as
//! `PUT /products/{sku}` does; only the per-caller rate limit is off (it guards the API, and
//! flashctl holds the table's credentials anyway).

use crate::output::Out;
use crate::target::Target;
use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use flash_aws::dynamo::{decode_product, keys, ledger};
use flash_aws::Env;
use flash_domain::ports::Store;
use flash_domain::{OrderId, Product};
use lambda_http::{Body, Request};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Who flashctl's writes are made as: idempotency keys are scoped to the caller, so every
/// operator's retry of the same import is recognised.
pub const CALLER: &str = "flashctl";

#[derive(Subcommand)]
pub enum ProductCommand {
    /// Create a product, or add stock to it and change the settings given.
    Put {
        sku: String,
        #[arg(long)]
        name: String,
        /// Units to add (a new product starts with them).
        #[arg(long)]
        stock: u64,
        #[arg(long)]
        per_user_limit: Option<u32>,
        /// RFC 3339.
        #[arg(long)]
        sale_starts_at: Option<String>,
        /// RFC 3339.
        #[arg(long)]
        sale_ends_at: Option<String>,
        #[arg(long)]
        payment_window_seconds: Option<u32>,
        /// Stock shard items (a new product only; default one per 100 units).
        #[arg(long)]
        shards: Option<u32>,
        /// Makes a retry of this restock add its stock once.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// One product: what is left and its settings.
    Get { sku: String },
    /// Every product.
    List,
    /// Create and restock the products of a JSON (an array of objects with `sku` and the
    /// fields of `PUT /products/{sku}`) or CSV file (a header row naming the same fields).
    /// Importing the same file again adds nothing.
    Import {
        file: PathBuf,
        /// Products written at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
}

pub async fn run(target: &Target, cmd: ProductCommand, out: Out) -> Result<()> {
    match cmd {
        ProductCommand::Put {
            sku,
            name,
            stock,
            per_user_limit,
            sale_starts_at,
            sale_ends_at,
            payment_window_seconds,
            shards,
            idempotency_key,
        } => {
            let mut body = json!({"name": name, "stock": stock});
            let optional = [
                ("per_user_limit", per_user_limit.map(Value::from)),
                ("sale_starts_at", sale_starts_at.map(Value::from)),
                ("sale_ends_at", sale_ends_at.map(Value::from)),
                (
                    "payment_window_seconds",
                    payment_window_seconds.map(Value::from),
                ),
                ("shards", shards.map(Value::from)),
            ];
            for (k, v) in optional {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            let (status, answer) = Handler::new(target)?
                .put(&sku, &body, idempotency_key.as_deref())
                .await?;
            let outcome = if status == 201 {
                "created"
            } else {
                "stock added"
            };
            if out.json {
                out.print_json(&json!({"status": status, "product": answer}));
            } else {
                println!("{sku}: {outcome}");
                out.record(&answer);
            }
        }
        ProductCommand::Get { sku } => out.record(&Handler::new(target)?.get(&sku).await?),
        ProductCommand::List => list(target, out).await?,
        ProductCommand::Import { file, concurrency } => {
            crate::import::run(target, &file, concurrency.max(1), out).await?
        }
    }
    Ok(())
}

/// The products function, called in-process as API Gateway would call it.
pub struct Handler {
    products: products::Deployed,
}

impl Handler {
    pub fn new(target: &Target) -> Result<Self> {
        let env: Env = [
            ("TABLE_NAME", target.table.as_str()),
            ("RATE_LIMIT_CAPACITY", "0"),
        ]
        .into_iter()
        .collect();
        Ok(Self {
            products: products::Products::from_env(&target.aws, &env)?,
        })
    }

    /// `PUT /products/{sku}` with `body`: the status and the answer's body.
    pub async fn put(&self, sku: &str, body: &Value, key: Option<&str>) -> Result<(u16, Value)> {
        let req = request("PUT", sku, Some(&body.to_string()), key)?;
        let (status, answer) = self.call(req).await?;
        match status {
            200 | 201 => Ok((status, answer)),
            _ => Err(refused(status, &answer)),
        }
    }

    /// `GET /products/{sku}`.
    pub async fn get(&self, sku: &str) -> Result<Value> {
        let (status, answer) = self.call(request("GET", sku, None, None)?).await?;
        match status {
            200 => Ok(answer),
            _ => Err(refused(status, &answer)),
        }
    }

    async fn call(&self, req: Request) -> Result<(u16, Value)> {
        let resp = self.products.handle(req).await;
        let status = resp.status().as_u16();
        let body = match resp.body() {
            Body::Text(t) => serde_json::from_str(t).unwrap_or(Value::String(t.clone())),
            Body::Binary(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        Ok((status, body))
    }
}

/// The function's error answer as one line: `sku: 400 invalid_request: ...`.
fn refused(status: u16, answer: &Value) -> anyhow::Error {
    let code = answer["error"]["code"].as_str().unwrap_or("error");
    let message = answer["error"]["message"].as_str().unwrap_or("");
    anyhow!("{status} {code}: {message}")
}

/// The API Gateway (payload 2.0) request of an admin's `method /products/{sku}`, from the
/// repository's own sample event.
fn request(method: &str, sku: &str, body: Option<&str>, key: Option<&str>) -> Result<Request> {
    let mut e: Value = serde_json::from_str(include_str!("../../../events/put-product.json"))
        .context("the sample event")?;
    let path = format!("/products/{sku}");
    e["routeKey"] = json!(format!("{method} /products/{{sku}}"));
    e["rawPath"] = json!(path);
    e["requestContext"]["http"]["method"] = json!(method);
    e["requestContext"]["http"]["path"] = json!(path);
    e["pathParameters"] = json!({"sku": sku});
    let jwt = &mut e["requestContext"]["authorizer"]["jwt"];
    jwt["claims"]["sub"] = json!(CALLER);
    jwt["claims"]["scope"] = json!(flash_aws::http::ADMIN_SCOPE);
    e["headers"]["content-type"] = json!("application/json");
    match body {
        Some(b) => {
            e["body"] = json!(b);
            e["headers"]["content-length"] = json!(b.len().to_string());
        }
        None => {
            e.as_object_mut().map(|o| o.remove("body"));
            e["headers"]["content-length"] = json!("0");
        }
    }
    e["isBase64Encoded"] = json!(false);
    if let Some(k) = key {
        e["headers"]["idempotency-key"] = json!(k);
    }
    lambda_http::request::from_str(&e.to_string()).context("building the request")
}

/// Every product's `META` item, from a Scan of the table (products are few beside orders).
async fn list(target: &Target, out: Out) -> Result<()> {
    let store = target.store();
    let mut products: Vec<Product> = Vec::new();
    let mut unreadable = None;
    let values = [
        (":meta", keys::META.to_owned()),
        (":p", keys::PRODUCT_PREFIX.to_owned()),
    ];
    let filter = "sk = :meta AND begins_with(pk, :p)";
    ledger::scan_each(
        &store,
        Some((filter, &values)),
        None,
        |item| match decode_product(item) {
            Ok(p) => products.push(p),
            Err(e) => unreadable = Some(e),
        },
    )
    .await?;
    if let Some(e) = unreadable {
        return Err(e.into());
    }
    products.sort_by(|a, b| a.sku.as_str().cmp(b.sku.as_str()));
    let mut views = Vec::new();
    for p in &products {
        let available: u64 = store
            .read_shards(p)
            .await?
            .iter()
            .map(|s| s.available)
            .sum();
        views.push(json!({
            "sku": p.sku, "name": p.name, "stock_added": p.stock_added, "available": available,
            "shards": p.shards, "per_user_limit": p.per_user_limit,
            "sold_out": available == 0,
        }));
    }
    if out.json {
        out.print_json(&views);
    } else {
        println!(
            "{:<24} {:>10} {:>10} {:>6} {:>6}  name",
            "sku", "added", "available", "shards", "limit"
        );
        for v in &views {
            println!(
                "{:<24} {:>10} {:>10} {:>6} {:>6}  {}",
                v["sku"].as_str().unwrap_or_default(),
                v["stock_added"].as_u64().unwrap_or_default(),
                v["available"].as_u64().unwrap_or_default(),
                v["shards"].as_u64().unwrap_or_default(),
                v["per_user_limit"]
                    .as_u64()
                    .map_or("-".into(), |l| l.to_string()),
                v["name"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// `order get ID`: the order as an admin sees it, with its owner and where its units came from.
pub async fn order_get(target: &Target, id: &str, out: Out) -> Result<()> {
    let id = OrderId::parse(id).map_err(|e| anyhow!("order id {id:?}: {e}"))?;
    let Some(order) = target.store().get_order(&id).await? else {
        bail!("no order {id}");
    };
    let mut view = serde_json::to_value(flash_aws::http::OrderView::of(&order))?;
    view["owner"] = json!(order.owner);
    view["takes"] = json!(order
        .takes
        .iter()
        .map(|t| json!({"shard": t.shard, "units": t.units}))
        .collect::<Vec<_>>());
    out.record(&view);
    Ok(())
}
