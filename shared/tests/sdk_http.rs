//! The SDK's HTTP/1.1 client over TLS, against a local TLS endpoint whose certificate chains to
//! the tests' own CA (`tests/fixtures/tls`, made with openssl; valid for a century). Every other
//! test reaches the local stack over plain HTTP, so this is where the TLS half, the timeouts and
//! the pool's handling of a closed connection are checked.

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use shared::sdk_http::Http1Client;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CA: &[u8] = include_bytes!("fixtures/tls/ca.pem");
const CERT: &[u8] = include_bytes!("fixtures/tls/localhost.pem");
const KEY: &[u8] = include_bytes!("fixtures/tls/localhost.key");

/// How the endpoint answers each request of a connection.
#[derive(Clone, Copy)]
enum Answer {
    /// `ListTables`' empty answer, the connection kept open for more.
    Tables,
    /// The same answer, then the connection closed.
    TablesThenClose,
    /// Nothing, ever.
    Silence,
    /// The first connection closed after its request is read, unanswered; then `Tables`.
    DropFirst,
    /// The first request answered 500 on a connection kept open; then `Tables`.
    ServerErrorFirst,
    /// Connections accepted, and their TLS handshake never answered.
    StallHandshake,
}

/// A TLS endpoint on localhost: how many connections it accepted, the protocol each negotiated
/// by ALPN, and each request's request line.
struct Endpoint {
    url: String,
    accepted: Arc<AtomicUsize>,
    alpn: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
    request_lines: Arc<Mutex<Vec<String>>>,
}

async fn endpoint(answer: Answer) -> Endpoint {
    let certs = vec![CertificateDer::from_pem_slice(CERT).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(KEY).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://localhost:{}", listener.local_addr().expect("addr").port());
    let (accepted, alpn, request_lines) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let (counter, protocols, lines) = (accepted.clone(), alpn.clone(), request_lines.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = counter.fetch_add(1, Ordering::SeqCst);
            let (acceptor, protocols, lines) = (acceptor.clone(), protocols.clone(), lines.clone());
            tokio::spawn(async move {
                if matches!(answer, Answer::StallHandshake) {
                    let _held = tcp;
                    return std::future::pending::<()>().await;
                }
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                protocols.lock().unwrap().push(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
                let first = protocols.lock().unwrap().len() == 1;
                while let Some(line) = read_request(&mut tls).await {
                    lines.lock().unwrap().push(line);
                    if first && matches!(answer, Answer::DropFirst) {
                        return;
                    }
                    let failing = seen == 0 && lines.lock().unwrap().len() == 1 && matches!(answer, Answer::ServerErrorFirst);
                    let (status, body) = match failing {
                        true => ("500 Internal Server Error", r#"{"__type":"com.amazon.coral.service#InternalFailure","message":"boom"}"#),
                        false => ("200 OK", r#"{"TableNames":[]}"#),
                    };
                    match answer {
                        Answer::Silence => std::future::pending::<()>().await,
                        Answer::StallHandshake => unreachable!("no handshake"),
                        Answer::Tables | Answer::TablesThenClose | Answer::DropFirst | Answer::ServerErrorFirst => {
                            let head = format!(
                                "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n",
                                body.len()
                            );
                            if tls.write_all(format!("{head}{body}").as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                    if matches!(answer, Answer::TablesThenClose) {
                        let _ = tls.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    Endpoint { url, accepted, alpn, request_lines }
}

/// Reads one request (head and `content-length` body): its request line, or None at the end of
/// the connection.
async fn read_request(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length =
        head.lines().find_map(|l| l.to_lowercase().strip_prefix("content-length:").and_then(|n| n.trim().parse().ok())).unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    head.lines().next().map(str::to_owned)
}

fn dispatch_failure<E, R>(
    error: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> Option<&aws_smithy_runtime_api::client::result::DispatchFailure> {
    match error {
        aws_sdk_dynamodb::error::SdkError::DispatchFailure(failure) => Some(failure),
        _ => None,
    }
}

fn test_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(CA).expect("ca")).expect("a root");
    roots
}

/// A DynamoDB client of `endpoint` through `http`, with no retries (each call is one attempt).
fn dynamo(endpoint: &Endpoint, http: Http1Client, read_timeout: Duration) -> aws_sdk_dynamodb::Client {
    dynamo_retrying(endpoint, http, read_timeout, RetryConfig::disabled())
}

fn dynamo_retrying(endpoint: &Endpoint, http: Http1Client, read_timeout: Duration, retry: RetryConfig) -> aws_sdk_dynamodb::Client {
    let timeouts = TimeoutConfig::builder().connect_timeout(Duration::from_secs(2)).read_timeout(read_timeout).build();
    dynamo_with(endpoint, http, timeouts, retry)
}

fn dynamo_with(endpoint: &Endpoint, http: Http1Client, timeouts: TimeoutConfig, retry: RetryConfig) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "test-secret", None, None, "test"))
        .endpoint_url(&endpoint.url)
        .http_client(http.shared())
        .timeout_config(timeouts)
        .retry_config(retry)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

#[tokio::test]
async fn the_sdk_speaks_http1_over_tls_to_an_endpoint_it_trusts_and_keeps_the_connection() {
    let endpoint = endpoint(Answer::Tables).await;
    let client = dynamo(&endpoint, Http1Client::with_roots(test_roots()), Duration::from_secs(2));
    for call in 0..3 {
        let tables = client
            .list_tables()
            .send()
            .await
            .unwrap_or_else(|e| panic!("call {call}: {:?}", aws_smithy_types::error::display::DisplayErrorContext(&e)));
        assert_eq!(tables.table_names(), &[] as &[String]);
    }
    assert_eq!(endpoint.accepted.load(Ordering::SeqCst), 1, "one connection served the three calls");
    // The endpoint offers h2 as well; the client asks for no protocol by ALPN, so it gets HTTP/1.1.
    assert_eq!(*endpoint.alpn.lock().unwrap(), vec![None]);
    assert_eq!(*endpoint.request_lines.lock().unwrap(), vec!["POST / HTTP/1.1"; 3]);
}

#[tokio::test]
async fn the_sdk_refuses_an_endpoint_whose_certificate_its_roots_do_not_trust() {
    let endpoint = endpoint(Answer::Tables).await;
    // The system's roots: the tests' CA is not among them.
    let client = dynamo(&endpoint, Http1Client::with_native_roots(), Duration::from_secs(2));
    let error = client.list_tables().send().await.expect_err("an untrusted certificate");
    let Some(failure) = dispatch_failure(&error) else { panic!("failed before any answer: {error:?}") };
    assert!(failure.is_io(), "a failed connect, as I/O: {error:?}");
    let chain = format!("{:?}", aws_smithy_types::error::display::DisplayErrorContext(&error));
    assert!(chain.contains("UnknownIssuer"), "{chain}");
}

#[tokio::test]
async fn a_call_unanswered_within_the_read_timeout_fails_as_a_timeout_and_the_next_gets_a_fresh_connection() {
    let endpoint = endpoint(Answer::Silence).await;
    let client = dynamo(&endpoint, Http1Client::with_roots(test_roots()), Duration::from_millis(300));
    for call in 1..=2 {
        let started = std::time::Instant::now();
        let error = client.list_tables().send().await.expect_err("no answer");
        let Some(failure) = dispatch_failure(&error) else { panic!("call {call}: failed before any answer: {error:?}") };
        assert!(failure.is_timeout(), "call {call}: {error:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "call {call}: gave up at the read timeout, not the connect one");
        assert_eq!(endpoint.accepted.load(Ordering::SeqCst), call, "the timed-out connection is not reused");
    }
}

#[tokio::test]
async fn a_connection_the_endpoint_closed_while_idle_is_replaced_without_a_failed_call() {
    let endpoint = endpoint(Answer::TablesThenClose).await;
    let client = dynamo(&endpoint, Http1Client::with_roots(test_roots()), Duration::from_secs(2));
    for call in 1..=3 {
        client
            .list_tables()
            .send()
            .await
            .unwrap_or_else(|e| panic!("call {call}: {:?}", aws_smithy_types::error::display::DisplayErrorContext(&e)));
        // The close reaches the pool before the next call, as after any idle spell.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(endpoint.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_connection_dropped_before_its_answer_is_retried_by_the_sdk_as_a_transient_failure() {
    let endpoint = endpoint(Answer::DropFirst).await;
    let retrying = RetryConfig::standard().with_max_attempts(2).with_initial_backoff(Duration::from_millis(10));
    let client = dynamo_retrying(&endpoint, Http1Client::with_roots(test_roots()), Duration::from_secs(2), retrying);
    client.list_tables().send().await.unwrap_or_else(|e| panic!("{:?}", aws_smithy_types::error::display::DisplayErrorContext(&e)));
    assert_eq!(endpoint.accepted.load(Ordering::SeqCst), 2, "the second attempt, on a new connection");
    assert_eq!(endpoint.request_lines.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_handshake_left_unanswered_fails_at_the_connect_timeout_though_no_read_timeout_is_set() {
    let endpoint = endpoint(Answer::StallHandshake).await;
    // As the SDK's defaults have it: a connect timeout, no read timeout.
    let timeouts = TimeoutConfig::builder().connect_timeout(Duration::from_millis(300)).build();
    let client = dynamo_with(&endpoint, Http1Client::with_roots(test_roots()), timeouts, RetryConfig::disabled());
    let started = std::time::Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(5), client.list_tables().send()).await;
    let error = answered.expect("given up within the connect timeout, not held for ever").expect_err("no handshake");
    let Some(failure) = dispatch_failure(&error) else { panic!("failed before any answer: {error:?}") };
    assert!(failure.is_timeout(), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(endpoint.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_that_answered_a_server_error_is_poisoned_so_the_retry_takes_a_new_one() {
    let endpoint = endpoint(Answer::ServerErrorFirst).await;
    let retrying = RetryConfig::standard().with_max_attempts(2).with_initial_backoff(Duration::from_millis(10));
    let client = dynamo_retrying(&endpoint, Http1Client::with_roots(test_roots()), Duration::from_secs(2), retrying);
    client.list_tables().send().await.unwrap_or_else(|e| panic!("{:?}", aws_smithy_types::error::display::DisplayErrorContext(&e)));
    assert_eq!(endpoint.request_lines.lock().unwrap().len(), 2, "the 500, then the retry");
    // The endpoint kept the first connection open: only poisoning keeps the pool from reusing it.
    assert_eq!(endpoint.accepted.load(Ordering::SeqCst), 2, "the retry on a new connection");
}
