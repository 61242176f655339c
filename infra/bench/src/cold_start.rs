//! Cold starts: each function's release binary (`cargo lambda build --release`, built for this
//! machine's x86_64; the deployed target is arm64) is exec'd against a minimal Lambda Runtime
//! API stub on 127.0.0.1, and the time from exec to its first request to that API (`GET
//! /2018-06-01/runtime/invocation/next`, which the runtime sends once `main` has built its
//! clients and handler) is its init time. The stub never answers, and the process is killed.
//! Also: binary size, and the size of the zip Lambda would be given (the `bootstrap` alone).

use crate::sale::round3;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const FUNCTIONS: [&str; 7] = [
    "place-order",
    "process-orders",
    "get-order",
    "advance-order",
    "products",
    "expire-orders",
    "reconcile",
];
const FIRST_REQUEST: &str = "GET /2018-06-01/runtime/invocation/next";
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// ELF `e_machine` for x86-64.
const EM_X86_64: u16 = 62;

#[derive(Debug, Clone, Serialize)]
pub struct ColdStart {
    pub init_ms_median: f64,
    pub binary_bytes: u64,
    pub zip_bytes: u64,
}

/// What each start took, for the printed table.
pub struct Measured {
    pub report: ColdStart,
    pub min_ms: f64,
    pub max_ms: f64,
}

pub fn measure_all(lambda_dir: &Path, starts: usize) -> anyhow::Result<BTreeMap<String, Measured>> {
    let mut out = BTreeMap::new();
    for function in FUNCTIONS {
        let dir = lambda_dir.join(function);
        let binary = dir.join("bootstrap");
        check_native(&binary)?;
        let zip = dir.join("bootstrap.zip");
        let _ = std::fs::remove_file(&zip);
        let status = Command::new("zip")
            .args(["-q", "-X", "-j"])
            .arg(&zip)
            .arg(&binary)
            .status()
            .context("running zip (is it installed?)")?;
        if !status.success() {
            bail!("zip failed for {}", binary.display());
        }
        // One start not counted: it pages the binary in.
        start_once(function, &binary)?;
        let times = (0..starts)
            .map(|_| start_once(function, &binary).map(|d| d.as_secs_f64() * 1000.0))
            .collect::<anyhow::Result<Vec<f64>>>()?;
        let spread = Spread::of(&times);
        out.insert(
            function.to_owned(),
            Measured {
                report: ColdStart {
                    init_ms_median: spread.median_ms,
                    binary_bytes: std::fs::metadata(&binary)?.len(),
                    zip_bytes: std::fs::metadata(&zip)?.len(),
                },
                min_ms: spread.min_ms,
                max_ms: spread.max_ms,
            },
        );
    }
    Ok(out)
}

/// The median, min and max of a function's start times, read from an HdrHistogram of
/// microseconds (3 significant digits, so within 0.1%). The median is the nearest rank: of an
/// even count, the lower middle start.
#[derive(Debug, PartialEq)]
struct Spread {
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
}

impl Spread {
    fn of(times_ms: &[f64]) -> Self {
        // Up to START_TIMEOUT: a slower start fails before it is measured.
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .expect("bounds and 3 significant digits are within HdrHistogram's limits");
        for ms in times_ms {
            h.saturating_record((ms.max(0.0) * 1000.0).round() as u64);
        }
        // The middle of the value's bucket: the histogram's best estimate of it.
        let ms = |us: u64| {
            if h.is_empty() {
                0.0
            } else {
                round3(h.median_equivalent(us) as f64 / 1000.0)
            }
        };
        Self {
            median_ms: ms(h.value_at_quantile(0.5)),
            min_ms: ms(h.min()),
            max_ms: ms(h.max()),
        }
    }
}

/// Refuses anything but an x86-64 ELF: an arm64 `bootstrap` cannot run here.
fn check_native(binary: &Path) -> anyhow::Result<()> {
    let mut header = [0u8; 20];
    std::fs::File::open(binary)
        .and_then(|mut f| f.read_exact(&mut header))
        .with_context(|| {
            format!(
                "{} missing: build it with `cargo lambda build --release --lambda-dir ...`",
                binary.display()
            )
        })?;
    if &header[..4] != b"\x7fELF" || u16::from_le_bytes([header[18], header[19]]) != EM_X86_64 {
        bail!("{} is not an x86-64 ELF binary", binary.display());
    }
    Ok(())
}

/// The environment Lambda gives a function (the variables the runtime requires), plus what
/// ours read at start-up. Nothing else: no endpoints, so a start-up that reached for the
/// network would show.
fn lambda_env(function: &str, runtime_api: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", function.to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function}"),
        ),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "bench".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "local".into()),
        ("AWS_SECRET_ACCESS_KEY", "local".into()),
        ("TABLE_NAME", "OrdersTable".into()),
        (
            "ORDERS_QUEUE_URL",
            "http://127.0.0.1:9/000000000000/OrdersQueue".into(),
        ),
        (
            "PAYMENT_TIMEOUTS_QUEUE_URL",
            "http://127.0.0.1:9/000000000000/PaymentTimeoutsQueue".into(),
        ),
    ]
}

/// Exec to first runtime API request, once.
fn start_once(function: &str, binary: &Path) -> anyhow::Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::channel();
    let stub = std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let _ = conn.set_read_timeout(Some(START_TIMEOUT));
            let mut line = Vec::new();
            let mut buf = [0u8; 512];
            while !line.windows(2).any(|w| w == b"\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => line.extend_from_slice(&buf[..n]),
                }
            }
            let at = Instant::now();
            let first = String::from_utf8_lossy(&line)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            let _ = tx.send((at, first));
        }
    });
    let started = Instant::now();
    let mut child = Command::new(binary)
        .env_clear()
        .envs(lambda_env(function, &addr.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let got = rx.recv_timeout(START_TIMEOUT);
    let _ = child.kill();
    let _ = child.wait();
    let (at, first) = match got {
        Ok(v) => v,
        Err(_) => {
            // Unblock the stub's accept so its thread ends.
            if let Ok(mut c) = TcpStream::connect(addr) {
                let _ = c.write_all(b"\r\n");
            }
            let _ = stub.join();
            bail!("{function} made no runtime API request within {START_TIMEOUT:?}");
        }
    };
    let _ = stub.join();
    if !first.starts_with(FIRST_REQUEST) {
        bail!("{function}'s first runtime API request was {first:?}");
    }
    Ok(at - started)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= want * 0.001 + 0.001
    }

    #[test]
    fn the_spread_of_five_starts_is_their_median_min_and_max() {
        let s = Spread::of(&[30.0, 10.0, 52.5, 20.0, 40.0]);
        assert!(
            close(s.median_ms, 30.0) && close(s.min_ms, 10.0) && close(s.max_ms, 52.5),
            "{s:?}"
        );
    }

    #[test]
    fn the_median_of_an_even_count_is_the_lower_middle_start() {
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0]);
        assert!(close(s.median_ms, 2.0), "{s:?}");
    }

    #[test]
    fn no_starts_spread_to_zeros() {
        let s = Spread::of(&[]);
        assert_eq!((s.median_ms, s.min_ms, s.max_ms), (0.0, 0.0, 0.0));
    }
}
