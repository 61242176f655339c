//! `product import FILE`: many products created or restocked from a JSON or CSV file, each row
//! through the products function ([`crate::products::Handler`]), several at a time, with a
//! progress bar and a summary (created, restocked, unchanged, failed).
//!
//! Idempotent: each row has a key derived from the file's content and the row's place in it.
//! The key goes with the row's `PUT` as its `Idempotency-Key` (so a retried restock adds its
//! stock once wherever the products function records keys), and once the row is written an
//! `IMPORT#{key}` item records it; a row whose record exists is `unchanged` and not sent again.
//! Importing the same file twice therefore adds nothing; an edited file is a new import.

use crate::output::Out;
use crate::products::{Handler, CALLER};
use crate::target::Target;
use anyhow::{bail, Context, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use flash_aws::dynamo::keys;
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The fields of `PUT /products/{sku}` a CSV cell holds as a number.
const NUMBERS: [&str; 4] = [
    "stock",
    "per_user_limit",
    "payment_window_seconds",
    "shards",
];

/// One row: its product and the body of its `PUT`.
struct Row {
    line: usize,
    sku: String,
    body: Value,
    key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    Restocked,
    Unchanged,
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    rows: usize,
    created: usize,
    restocked: usize,
    unchanged: usize,
    failed: usize,
    failures: Vec<Failure>,
}

#[derive(Debug, Serialize)]
struct Failure {
    line: usize,
    sku: String,
    error: String,
}

pub async fn run(target: &Target, file: &Path, concurrency: usize, out: Out) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let rows = parse(file, &bytes)?;
    let handler = Handler::new(target)?;
    let bar = if out.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(rows.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut summary = Summary {
        rows: rows.len(),
        ..Summary::default()
    };
    let results: Vec<(usize, String, Result<Outcome>)> = stream::iter(rows)
        .map(|row| {
            let (handler, bar) = (&handler, &bar);
            async move {
                let r = import_row(target, handler, &row).await;
                bar.inc(1);
                (row.line, row.sku, r)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    bar.finish_and_clear();
    for (line, sku, r) in results {
        match r {
            Ok(Outcome::Created) => summary.created += 1,
            Ok(Outcome::Restocked) => summary.restocked += 1,
            Ok(Outcome::Unchanged) => summary.unchanged += 1,
            Err(e) => {
                summary.failed += 1;
                let error = format!("{e:#}");
                summary.failures.push(Failure { line, sku, error });
            }
        }
    }
    summary.failures.sort_by_key(|f| f.line);
    if out.json {
        out.print_json(&summary);
    } else {
        for f in &summary.failures {
            println!("{}:{}: {}: {}", file.display(), f.line, f.sku, f.error);
        }
        println!(
            "{} rows: {} created, {} restocked, {} unchanged, {} failed",
            summary.rows, summary.created, summary.restocked, summary.unchanged, summary.failed
        );
    }
    if summary.failed > 0 {
        bail!("{} of {} rows failed", summary.failed, summary.rows);
    }
    Ok(())
}

async fn import_row(target: &Target, handler: &Handler, row: &Row) -> Result<Outcome> {
    let store = target.store();
    let record = keys::import_key(&row.key);
    let done = store
        .get(record.clone())
        .consistent_read(true)
        .send()
        .await
        .map_err(aws_sdk_dynamodb::Error::from)
        .context("dynamodb GetItem")?;
    if done.item.is_some() {
        return Ok(Outcome::Unchanged);
    }
    let (status, _) = handler.put(&row.sku, &row.body, Some(&row.key)).await?;
    let mut item = record;
    item.insert("sku".into(), AttributeValue::S(row.sku.clone()));
    item.insert("caller".into(), AttributeValue::S(CALLER.into()));
    store
        .client()
        .put_item()
        .table_name(store.table())
        .set_item(Some(item))
        .send()
        .await
        .map_err(aws_sdk_dynamodb::Error::from)
        .context("dynamodb PutItem (import record)")?;
    Ok(if status == 201 {
        Outcome::Created
    } else {
        Outcome::Restocked
    })
}

/// The rows of a JSON array or a CSV file (by extension; JSON when the content starts with `[`).
fn parse(file: &Path, bytes: &[u8]) -> Result<Vec<Row>> {
    let file_digest = Sha256::digest(bytes);
    let json = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        || bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let objects: Vec<(usize, Map<String, Value>)> = if json {
        let v: Vec<Value> = serde_json::from_slice(bytes)
            .with_context(|| format!("{}: not a JSON array of products", file.display()))?;
        v.into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(o) => Ok((i + 1, o)),
                _ => bail!("{}: item {} is not an object", file.display(), i + 1),
            })
            .collect::<Result<_>>()?
    } else {
        csv_rows(file, bytes)?
    };
    objects
        .into_iter()
        .map(|(line, mut o)| {
            let sku = match o.remove("sku") {
                Some(Value::String(s)) if !s.is_empty() => s,
                _ => bail!("{}:{line}: no sku", file.display()),
            };
            let mut h = Sha256::new();
            h.update(file_digest);
            h.update((line as u64).to_be_bytes());
            // Idempotency keys are 1-128 printable ASCII characters.
            let key = format!("import-{}", &hex::encode(h.finalize())[..40]);
            Ok(Row {
                line,
                sku,
                body: Value::Object(o),
                key,
            })
        })
        .collect()
}

/// CSV with a header row; an empty cell leaves its field out.
fn csv_rows(file: &Path, bytes: &[u8]) -> Result<Vec<(usize, Map<String, Value>)>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let header = reader
        .headers()
        .with_context(|| format!("{}: no header row", file.display()))?
        .clone();
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: row {}", file.display(), i + 2))?;
        let mut o = Map::new();
        for (name, cell) in header.iter().zip(record.iter()) {
            if cell.is_empty() {
                continue;
            }
            let value = match cell.parse::<i64>() {
                Ok(n) if NUMBERS.contains(&name) => Value::from(n),
                _ => Value::from(cell),
            };
            o.insert(name.to_owned(), value);
        }
        rows.push((i + 2, o));
    }
    Ok(rows)
}
