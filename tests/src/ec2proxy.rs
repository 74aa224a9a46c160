//! The lab's EC2 endpoint as the agents see it: a proxy in front of the
//! emulator that counts every request by caller and action, and can answer
//! as a throttled EC2 does (HTTP 503 `RequestLimitExceeded`), for every
//! call or through EC2's per-action token buckets (CreateTags 100 burst /
//! 10 per s, other writes 50 / 5 per s, Describe* 100 / 20 per s, shared
//! by the account: here, by every agent).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How the proxy answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything reaches the emulator.
    PassThrough,
    /// Every call is throttled.
    ThrottleAll,
    /// EC2's token buckets.
    Buckets,
}

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    at: Instant,
}

impl Bucket {
    fn new(burst: f64, rate: f64) -> Bucket {
        Bucket {
            tokens: burst,
            burst,
            rate,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// EC2's documented bucket for an action.
fn bucket_for(action: &str) -> Bucket {
    if action.starts_with("Describe") {
        Bucket::new(100.0, 20.0)
    } else if action == "CreateTags" {
        Bucket::new(100.0, 10.0)
    } else {
        Bucket::new(50.0, 5.0)
    }
}

/// One counted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub at: Instant,
    pub from: IpAddr,
    pub action: String,
    pub throttled: bool,
}

impl Request {
    pub fn mutating(&self) -> bool {
        !self.action.starts_with("Describe")
    }
}

#[derive(Default)]
struct Inner {
    mode: Option<Mode>,
    buckets: BTreeMap<String, Bucket>,
    log: Vec<Request>,
}

#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Mutex<Inner>>,
    upstream: String,
}

impl Proxy {
    /// A proxy to the emulator at `upstream` (http://host:port).
    pub fn new(upstream: &str) -> Proxy {
        Proxy {
            inner: Arc::default(),
            upstream: upstream.to_string(),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        let mut inner = self.inner.lock().expect("proxy");
        inner.mode = Some(mode);
        inner.buckets.clear();
    }

    /// Every request counted since the lab started.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().expect("proxy").log.clone()
    }

    /// Requests from `from` in [t0, t1): (all, mutating, throttled).
    pub fn count(&self, from: IpAddr, t0: Instant, t1: Instant) -> (usize, usize, usize) {
        let log = self.requests();
        let mine: Vec<&Request> = log
            .iter()
            .filter(|r| r.from == from && r.at >= t0 && r.at < t1)
            .collect();
        (
            mine.len(),
            mine.iter().filter(|r| r.mutating()).count(),
            mine.iter().filter(|r| r.throttled).count(),
        )
    }

    /// Serves until the runtime stops.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new().fallback(forward).with_state(self);
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    }

    /// Whether `action` from `from` is let through; counts it either way.
    fn admit(&self, from: IpAddr, action: &str) -> bool {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("proxy");
        let pass = match inner.mode.unwrap_or(Mode::PassThrough) {
            Mode::PassThrough => true,
            Mode::ThrottleAll => false,
            Mode::Buckets => inner
                .buckets
                .entry(action.to_string())
                .or_insert_with(|| bucket_for(action))
                .take(now),
        };
        inner.log.push(Request {
            at: now,
            from,
            action: action.to_string(),
            throttled: !pass,
        });
        pass
    }
}

/// The EC2 Query API names its action in the form body (or the query).
fn action_of(uri: &Uri, body: &[u8]) -> String {
    let form = String::from_utf8_lossy(body);
    let query = uri.query().unwrap_or("");
    form.split('&')
        .chain(query.split('&'))
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("Unknown")
        .to_string()
}

const THROTTLED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>lab-throttle</RequestID></Response>";

async fn forward(
    State(proxy): State<Proxy>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let action = action_of(&uri, &body);
    if !proxy.admit(peer.ip(), &action) {
        return (StatusCode::SERVICE_UNAVAILABLE, THROTTLED).into_response();
    }
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let target = format!(
        "{}{}",
        proxy.upstream,
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = hyper::Request::builder().method(method).uri(target);
    for (k, v) in &headers {
        if k != "host" {
            request = request.header(k, v);
        }
    }
    let Ok(request) = request.body(Body::from(body)) else {
        return (StatusCode::BAD_GATEWAY, "bad request").into_response();
    };
    match client.request(request).await {
        Ok(answer) => {
            let (parts, incoming) = answer.into_parts();
            match incoming.collect().await {
                Ok(b) => Response::from_parts(parts, Body::from(b.to_bytes())),
                Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            }
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_read_from_the_form() {
        let uri: Uri = "/".parse().unwrap();
        assert_eq!(
            action_of(&uri, b"Action=DescribeInstances&Version=2016-11-15"),
            "DescribeInstances"
        );
        assert_eq!(
            action_of(&"/?Action=CreateTags".parse().unwrap(), b""),
            "CreateTags"
        );
    }

    #[test]
    fn buckets_allow_the_burst_then_the_rate() {
        let mut b = bucket_for("CreateTags");
        let t0 = Instant::now();
        let burst = (0..200).filter(|_| b.take(t0)).count();
        assert_eq!(burst, 100);
        assert!(
            b.take(t0 + std::time::Duration::from_millis(100)),
            "10 per s"
        );
        assert!(!b.take(t0 + std::time::Duration::from_millis(100)));
    }
}
