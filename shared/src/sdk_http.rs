//! The SDK's HTTP client: HTTP/1.1 only, over rustls with ring, on hyper-util's connection pool.
//!
//! Every AWS API this backend calls (DynamoDB, Secrets Manager, SES, API Gateway's management
//! API, DynamoDB Streams) is served over HTTP/1.1, yet the SDK's own hyper client always links
//! an HTTP/2 stack too (aws-smithy-http-client turns on hyper's `http2`): about 0.4 MiB of every
//! bootstrap that no request uses. This is that client without it: the same pool and rustls
//! connector, the connect and read timeouts the SDK's configuration asks for, errors classified
//! the way the SDK's retry strategy reads them (a timeout, an I/O failure, a caller's mistake),
//! and a connection the SDK gives up on (a timeout, a 5xx) poisoned so it is never reused.

use aws_smithy_runtime_api::client::connection::{CaptureSmithyConnection, ConnectionMetadata};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::ErrorKind;
use hyper_util::client::legacy::connect::{capture_connection, HttpConnector as TcpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

type Https = hyper_rustls::HttpsConnector<TcpConnector>;
type Pool = Client<ConnectWithin, SdkBody>;

/// The timeouts a connector is made for: the SDK asks for one connector per set it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timeouts {
    connect: Option<Duration>,
    read: Option<Duration>,
}

/// An HTTP/1.1 client for the SDK, trusting the roots it was made with. One is made per
/// execution environment (in `sdk_config`) and shared by every SDK client of the function.
#[derive(Debug, Clone)]
pub struct Http1Client {
    tls: Arc<rustls::ClientConfig>,
    connectors: Arc<Mutex<Vec<(Timeouts, SharedHttpConnector)>>>,
}

impl Http1Client {
    /// Trusting the system's root certificates, as the SDK's own client does (Lambda's image
    /// ships them). Their parsing is part of init; none loading is logged, as every TLS call
    /// would then fail.
    pub fn with_native_roots() -> Self {
        let loaded = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            tracing::error!(errors = loaded.errors.len(), "no system root certificate loaded: every TLS call will fail");
        }
        Self::with_roots(roots)
    }

    /// Trusting `roots` only.
    pub fn with_roots(roots: rustls::RootCertStore) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| unreachable!("ring supports rustls's default protocol versions"))
            .with_root_certificates(roots)
            .with_no_client_auth();
        Http1Client { tls: Arc::new(tls), connectors: Arc::default() }
    }

    pub fn shared(self) -> SharedHttpClient {
        SharedHttpClient::new(self)
    }
}

impl HttpClient for Http1Client {
    fn http_connector(&self, settings: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        let timeouts = Timeouts { connect: settings.connect_timeout(), read: settings.read_timeout() };
        let mut made = self.connectors.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, connector)) = made.iter().find(|(made_for, _)| *made_for == timeouts) {
            return connector.clone();
        }
        let connector = SharedHttpConnector::new(Http1Connector::new(self.tls.clone(), timeouts));
        made.push((timeouts, connector.clone()));
        connector
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        Some(ConnectorMetadata::new("hyper", Some("1.x".into())))
    }
}

/// One pool of connections, with the timeouts it was made for.
#[derive(Debug, Clone)]
struct Http1Connector {
    pool: Pool,
    read_timeout: Option<Duration>,
}

impl Http1Connector {
    fn new(tls: Arc<rustls::ClientConfig>, timeouts: Timeouts) -> Self {
        let mut tcp = TcpConnector::new();
        tcp.enforce_http(false);
        // A request is written in one go and answered in one; Nagle's delay only adds latency.
        tcp.set_nodelay(true);
        // Also per TCP attempt: hyper-util shares it among a name's addresses, so one that does not
        // answer leaves time to try the next (the limit around the whole connect is `ConnectWithin`).
        tcp.set_connect_timeout(timeouts.connect);
        // HTTP/1.1 only: the builder asks for no protocol by ALPN, which servers answer with
        // HTTP/1.1.
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*tls).clone()).https_or_http().enable_http1().wrap_connector(tcp);
        let connect = ConnectWithin { https, limit: timeouts.connect };
        // The timer makes idle connections expire (hyper's default: after 90 s).
        let pool = Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).build(connect);
        Http1Connector { pool, read_timeout: timeouts.read }
    }
}

impl HttpConnector for Http1Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let mut request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        // What the SDK's connection-poisoning interceptor reaches the connection through.
        let connection = capture_connection(&mut request);
        if let Some(capture) = request.extensions().get::<CaptureSmithyConnection>() {
            capture.set_connection_retriever(move || {
                connection.connection_metadata().as_ref()?;
                let connection = connection.clone();
                let poison = move || {
                    if let Some(connected) = connection.connection_metadata().as_ref() {
                        connected.poison();
                    }
                };
                Some(ConnectionMetadata::builder().proxied(false).poison_fn(poison).build())
            });
        }
        let answer = self.pool.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let answered = match read_timeout {
                Some(limit) => {
                    tokio::time::timeout(limit, answer).await.map_err(|_| ConnectorError::timeout(Box::new(ReadTimeout(limit))))?
                }
                None => answer.await,
            };
            let response = answered.map_err(classify)?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x)).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no response within the read timeout of {0:?}")]
struct ReadTimeout(Duration);

#[derive(Debug, thiserror::Error)]
#[error("no connection within the connect timeout of {0:?}")]
struct ConnectTimeout(Duration);

/// The HTTPS connector with the connect timeout around all of connecting: DNS, TCP and the TLS
/// handshake (a peer that accepts and then stalls the handshake would otherwise hold the call for
/// as long as the read timeout, which the SDK leaves unset by default: for ever).
#[derive(Debug, Clone)]
struct ConnectWithin {
    https: Https,
    limit: Option<Duration>,
}

type BoxError = Box<dyn Error + Send + Sync>;

impl tower_service::Service<hyper::Uri> for ConnectWithin {
    type Response = <Https as tower_service::Service<hyper::Uri>>::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.https.poll_ready(cx)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let connecting = self.https.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match limit {
                Some(limit) => tokio::time::timeout(limit, connecting).await.map_err(|_| Box::new(ConnectTimeout(limit)) as BoxError)?,
                None => connecting.await,
            }
        })
    }
}

/// What the SDK's retry strategy needs to know of a failed call: a failed connect, a dropped
/// connection or any I/O failure is retried as I/O; a message cut short as a transient error;
/// a timeout (connecting or waiting for the answer) as a timeout; a request hyper could not send
/// as the caller's mistake.
fn classify(error: hyper_util::client::legacy::Error) -> ConnectorError {
    let hyper_error = source::<hyper::Error>(&error);
    let kind: fn(aws_smithy_runtime_api::box_error::BoxError) -> ConnectorError = match hyper_error {
        _ if source::<ConnectTimeout>(&error).is_some() => ConnectorError::timeout,
        _ if error.is_connect() => ConnectorError::io,
        Some(e) if e.is_timeout() => ConnectorError::timeout,
        Some(e) if e.is_user() => ConnectorError::user,
        Some(e) if e.is_closed() || e.is_canceled() => ConnectorError::io,
        Some(e) if e.is_incomplete_message() => |e| ConnectorError::other(e, Some(ErrorKind::TransientError)),
        _ if source::<std::io::Error>(&error).is_some() => ConnectorError::io,
        _ => |e| ConnectorError::other(e, None),
    };
    kind(error.into())
}

/// The first error of type `E` in `error`'s chain.
fn source<'a, E: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a E> {
    std::iter::successors(Some(error), |&e| e.source()).find_map(|e| e.downcast_ref::<E>())
}
