//! Counts what a request waits on: every AWS call (DynamoDB, Secrets Manager) at the SDK's HTTP
//! connector and every Redis command at a proxy in front of the test's Redis, each at its depth:
//! 1 for a call started before any answer came, else one more than the deepest call answered
//! before it started. The round trips are the deepest call's depth: the longest chain of calls
//! each made after the one before it was answered. Calls in flight together (a `join!` of three
//! reads) share a depth; a call that waited on another's answer is one deeper, even while a
//! slower sibling of that one is still out.
//!
//! Every answer is held for `HOLD` before the app gets it, so calls issued together are all
//! started before any of them is answered however the two cores schedule them.
//!
//! Mail is not counted: the local stack writes it to the outbox file. In AWS, SES's SendEmail is
//! one more round trip after the code is stored (register, resend, forgot).

use super::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const HOLD: Duration = Duration::from_millis(60);

#[derive(Default)]
struct Ledger {
    /// The deepest call answered so far.
    answered_depth: usize,
    /// Every call with its depth, in the order they started.
    calls: Vec<(usize, String)>,
}

#[derive(Clone, Default)]
pub struct RoundTrips {
    ledger: Arc<Mutex<Ledger>>,
}

impl RoundTrips {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Records a call starting now; its depth, for `answered`.
    pub fn started(&self, call: String) -> usize {
        let mut ledger = self.lock();
        let depth = ledger.answered_depth + 1;
        ledger.calls.push((depth, call));
        depth
    }
    pub fn answered(&self, depth: usize) {
        let mut ledger = self.lock();
        ledger.answered_depth = ledger.answered_depth.max(depth);
    }
    /// The round trips since the last `take`, each with its calls ("dynamodb GetItem", "redis
    /// EVALSHA"); the next request's first calls are at depth 1 again.
    pub fn take(&self) -> Vec<Vec<String>> {
        let mut ledger = self.lock();
        ledger.answered_depth = 0;
        let calls = std::mem::take(&mut ledger.calls);
        let deepest = calls.iter().map(|(depth, _)| *depth).max().unwrap_or(0);
        let mut trips = vec![Vec::new(); deepest];
        for (depth, call) in calls {
            trips[depth - 1].push(call);
        }
        trips
    }
}

/// An app whose every client is counted: its Redis behind a counting proxy, its SDK clients on a
/// counting HTTP connector. Bitget's calls are read from the double with `bitget_calls`.
pub async fn counted_app() -> (TestApp, RoundTrips) {
    let trips = RoundTrips::default();
    let proxy = redis_proxy(&require_env("REDIS_URL"), trips.clone()).await;
    let mut app = spawn_app_with(&[("REDIS_URL", proxy)]).await;
    let sdk = app.sdk.to_builder().http_client(counting_http_client(trips.clone())).build();
    app.state = AppState::all((*app.state.config).clone(), sdk).await.expect("state");
    trips.take();
    (app, trips)
}

fn counting_http_client(trips: RoundTrips) -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_runtime_api::client::http::{http_client_fn, HttpClient, SharedHttpConnector};
    let inner = shared::aws::https_client();
    http_client_fn(move |settings, components| {
        SharedHttpConnector::new(Counting { inner: inner.http_connector(settings, components), trips: trips.clone() })
    })
}

#[derive(Clone)]
struct Counting {
    inner: aws_smithy_runtime_api::client::http::SharedHttpConnector,
    trips: RoundTrips,
}

impl std::fmt::Debug for Counting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counting")
    }
}

impl aws_smithy_runtime_api::client::http::HttpConnector for Counting {
    fn call(
        &self,
        request: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
    ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
        // JSON protocols name the operation in X-Amz-Target ("DynamoDB_20120810.GetItem"); SES
        // v2 is REST, named by its path.
        let call = match request.headers().get("x-amz-target") {
            Some(target) => {
                let (service, operation) = target.split_once('.').unwrap_or((target, ""));
                let service = if service.starts_with("DynamoDB") { "dynamodb" } else { "secretsmanager" };
                format!("{service} {operation}")
            }
            None => format!("aws {}", request.uri()),
        };
        let depth = self.trips.started(call);
        let (answer, trips) = (self.inner.call(request), self.trips.clone());
        aws_smithy_runtime_api::client::http::HttpConnectorFuture::new(async move {
            let response = answer.await;
            tokio::time::sleep(HOLD).await;
            trips.answered(depth);
            response
        })
    }
}

/// A TCP proxy to `upstream` (`redis://host:port`) that records each command a client sends and
/// holds each batch of answers for `HOLD`.
async fn redis_proxy(upstream: &str, trips: RoundTrips) -> String {
    let address = upstream.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (address, trips) = (address.clone(), trips.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&address).await else { return };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                // A connection answers its commands in the order they came: their depths, queued.
                let depths = Arc::new(Mutex::new(std::collections::VecDeque::new()));
                let (answered, answered_depths) = (trips.clone(), depths.clone());
                let answers = tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let (mut pending, mut buf) = (Vec::new(), [0u8; 16 * 1024]);
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        let mut replies = 0;
                        while let Some(used) = reply_length(&pending, 0) {
                            pending.drain(..used);
                            replies += 1;
                        }
                        tokio::time::sleep(HOLD).await;
                        for _ in 0..replies {
                            let depth = answered_depths.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                            answered.answered(depth.expect("a reply pairs with the oldest unanswered command"));
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut pending = Vec::new();
                let mut buf = [0u8; 16 * 1024];
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                while let Ok(n) = client_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some((command, used)) = parse_command(&pending) {
                        let depth = trips.started(format!("redis {command}"));
                        depths.lock().unwrap_or_else(|p| p.into_inner()).push_back(depth);
                        pending.drain(..used);
                    }
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                answers.abort();
            });
        }
    });
    format!("redis://127.0.0.1:{port}")
}

/// One RESP command (an array of bulk strings) at the start of `bytes`: its name, upper case,
/// and its length; `None` until it has arrived whole.
fn parse_command(bytes: &[u8]) -> Option<(String, usize)> {
    fn line(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = bytes[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((&bytes[at..end], end + 2))
    }
    let (head, mut at) = line(bytes, 0)?;
    let count: usize = std::str::from_utf8(head.strip_prefix(b"*")?).ok()?.parse().ok()?;
    let mut name = String::new();
    for i in 0..count {
        let (len, start) = line(bytes, at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?).ok()?.parse().ok()?;
        if bytes.len() < start + len + 2 {
            return None;
        }
        if i == 0 {
            name = String::from_utf8_lossy(&bytes[start..start + len]).to_ascii_uppercase();
        }
        at = start + len + 2;
    }
    Some((name, at))
}

/// The length of the one RESP reply starting at `at`, once it has arrived whole.
fn reply_length(bytes: &[u8], at: usize) -> Option<usize> {
    let end = bytes.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
    let head = std::str::from_utf8(&bytes[at + 1..end]).ok()?;
    let next = end + 2;
    match bytes[at] {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(next - at),
        b'$' | b'!' | b'=' => {
            let len: i64 = head.parse().ok()?;
            if len < 0 {
                return Some(next - at);
            }
            let stop = next + len as usize + 2;
            (bytes.len() >= stop).then_some(stop - at)
        }
        b'*' | b'~' | b'>' | b'%' => {
            let count: i64 = head.parse().ok()?;
            let elements = if bytes[at] == b'%' { count * 2 } else { count };
            let mut cursor = next;
            for _ in 0..elements.max(0) {
                cursor += reply_length(bytes, cursor)?;
            }
            Some(cursor - at)
        }
        // A reply this parser cannot size would stall the count on its connection: say so.
        other => panic!("a RESP reply of a type the counter does not know: {:?}", other as char),
    }
}
