//! The local gateway as a client sees it: `target/debug/local-gateway` (built by `cargo build
//! --workspace`), started by a test on a free loopback port for the stack of `STACK_ENV` and
//! stopped, by its pid, when the test ends; its tokens; plain HTTP/1.1 calls to it.

use crate::stack;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The local gateway this test started; stopped by its pid when dropped, however the test ends.
pub struct Gateway {
    child: Child,
    pub port: u16,
    state: PathBuf,
    bin: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn gateway_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let bin = target.join("debug/local-gateway");
    assert!(
        bin.is_file(),
        "{} not found: build it with `cargo build -p local-gateway` (make test builds the workspace)",
        bin.display()
    );
    bin
}

impl Gateway {
    /// Starts `target/debug/local-gateway` for the stack of `STACK_ENV` on a free port, its
    /// log in `STATE/logs/{name}-gateway.log`, and waits until it answers.
    pub fn start(name: &str) -> Gateway {
        stack::vars(); // fails loudly when the stack is not running
        let env_file = std::env::var_os("STACK_ENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join(".local/test/stack.env"));
        let state = env_file
            .parent()
            .expect("stack.env has a directory")
            .to_owned();
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        std::fs::create_dir_all(state.join("logs")).expect("logs directory");
        let log = std::fs::File::create(state.join(format!("logs/{name}-gateway.log")))
            .expect("log file");
        let bin = gateway_bin();
        let child = Command::new(&bin)
            .args(["serve", "--state"])
            .arg(&state)
            .args(["--port", &port.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start local-gateway");
        let mut gateway = Gateway {
            child,
            port,
            state,
            bin,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while call(port, "GET", "/_local/stats", None, &[], None).0 != 200 {
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!(
                    "local-gateway exited ({status}); see its log in STATE/logs/{name}-gateway.log"
                );
            }
            assert!(
                Instant::now() < deadline,
                "local-gateway did not answer within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        gateway
    }

    /// A bearer token this gateway accepts.
    pub fn token(&self, sub: &str, admin: bool, ttl_s: u64) -> String {
        let mut command = Command::new(&self.bin);
        command.args(["token", "--state"]).arg(&self.state);
        command.args(["--sub", sub, "--ttl-seconds", &ttl_s.to_string()]);
        if admin {
            command.arg("--admin");
        }
        let out = command.output().expect("local-gateway token");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8 token")
            .trim()
            .to_owned()
    }

    /// One request; `POST /orders` gets an `Idempotency-Key` of its own.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let key = format!("authz-{:016x}", rand::random::<u64>());
        let mut headers = Vec::new();
        if method == "POST" && path == "/orders" {
            headers.push(("idempotency-key", key.as_str()));
        }
        call(self.port, method, path, token, &headers, body)
    }

    /// DynamoDB write requests the gateway's functions have made so far.
    pub fn writes(&self) -> u64 {
        let (status, stats) = call(self.port, "GET", "/_local/stats", None, &[], None);
        assert_eq!(status, 200, "{stats}");
        stats["write_requests"].as_u64().expect("write_requests")
    }
}

/// One HTTP/1.1 request on a connection of its own; the status and the JSON body (Null if
/// there is none or it is not JSON). A failed connection is status 0.
pub fn call(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value) {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return (0, Value::Null);
    };
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("content-type: application/json\r\n");
    }
    request.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8_lossy(&raw);
    let (head, mut payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let mut decoded = String::new();
    if chunked {
        while let Some((size, rest)) = payload.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 || rest.len() < size {
                break;
            }
            decoded.push_str(&rest[..size]);
            payload = rest[size..].trim_start_matches("\r\n");
        }
        payload = &decoded;
    }
    (status, serde_json::from_str(payload).unwrap_or(Value::Null))
}
