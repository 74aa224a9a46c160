//! The agent's HTTP endpoints: /healthz (alive), /readyz (data plane in place
//! and egress proven; the contract's `ReadyzBody`), /metrics (Prometheus
//! text), /status (the contract's `Status` document), and POST /handoff
//! (from this instance only: hand the route tables over, at shutdown).
//!
//! The server cannot be starved: every connection has a deadline for its
//! request head and one for all of it, keep-alive is off, and at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed as they come),
//! far below the file limit, so HTTP clients never take the sockets the
//! egress probes need. On shutdown open connections get a second, then are
//! dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State as Extract};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::status::{Shared, State};

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Time one connection may take in all (a handoff answers when done).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// What open connections get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/handoff", post(handoff))
        .with_state(shared)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(shared);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of files or the like: the probes come first.
                        tracing::warn!(error = %e, "HTTP accept failed; pausing accepts for 100ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let app = app.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(peer));
                        let mut app = app.clone();
                        async move { tower::Service::call(&mut app, req).await }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
                    drop(slot);
                });
            }
        }
    }
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        connections.abort_all();
    }
    Ok(())
}

async fn readyz(Extract(shared): Extract<Arc<Shared>>) -> Response {
    let body = shared.read(State::readyz);
    let code = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(Extract(shared): Extract<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn status(Extract(shared): Extract<Arc<Shared>>) -> Response {
    Json(shared.read(State::view)).into_response()
}

/// Only from this instance: a handoff makes the NAT drain, so nobody else
/// may ask for one, whatever the security group says.
async fn handoff(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extract(shared): Extract<Arc<Shared>>,
) -> Response {
    if !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "handoff is asked for on this instance only\n",
        )
            .into_response();
    }
    match shared.request_handoff().await {
        Some(done) => (StatusCode::OK, format!("{done}\n")).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is stopping or not running its loops yet\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natron_contract::client::{get, post};
    use natron_contract::readyz::{Area, ReadyzBody};
    use tokio::io::AsyncWriteExt;

    async fn server(shared: Arc<Shared>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(serve(listener, shared, std::future::pending()));
        port
    }

    #[tokio::test]
    async fn endpoints_answer_with_the_contracts_documents() {
        let shared = Arc::new(Shared::new());
        shared.set_problem(Area::Metadata, "connection refused");
        let port = server(shared.clone()).await;
        let t = Duration::from_secs(2);
        assert_eq!(get("127.0.0.1", port, "/healthz", t).await.unwrap().0, 200);
        let (code, body) = get("127.0.0.1", port, "/readyz", t).await.unwrap();
        assert_eq!(code, 503);
        let body: ReadyzBody = serde_json::from_str(&body).unwrap();
        assert!(!body.ready && body.starting);
        assert_eq!(body.reasons[0].area, Area::Metadata);
        assert_eq!(body.reasons[0].message, "connection refused");
        let (code, body) = get("127.0.0.1", port, "/metrics", t).await.unwrap();
        assert_eq!(code, 200);
        assert!(body.contains("natron_ready 0"), "{body}");
        let (code, body) = get("127.0.0.1", port, "/status", t).await.unwrap();
        assert_eq!(code, 200);
        let doc: natron_contract::status::Status = serde_json::from_str(&body).unwrap();
        assert_eq!(doc.problems[&Area::Metadata], "connection refused");
        assert!(!doc.ready);
    }

    #[tokio::test]
    async fn a_handoff_from_this_instance_is_passed_on_and_answered() {
        let shared = Arc::new(Shared::new());
        let mut requests = shared.take_handoff_requests().unwrap();
        tokio::spawn(async move {
            while let Some(done) = requests.recv().await {
                let _ = done.send("handed over 2 tables".into());
            }
        });
        let port = server(shared).await;
        let (code, body) = post("127.0.0.1", port, "/handoff", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!((code, body.trim()), (200, "handed over 2 tables"));
    }

    #[tokio::test]
    async fn slow_and_idle_clients_cannot_take_the_server() {
        let shared = Arc::new(Shared::new());
        let port = server(shared).await;
        // Far more idle connections than slots, each sending half a request.
        let mut idle = Vec::new();
        for _ in 0..(MAX_CONNECTIONS * 3) {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let _ = s.write_all(b"GET /readyz HTTP/1.1\r\n").await;
                idle.push(s);
            }
        }
        // Past the header deadline the slots are free again.
        tokio::time::sleep(HEADER_TIMEOUT + Duration::from_millis(500)).await;
        let (code, _) = get("127.0.0.1", port, "/healthz", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(code, 200);
        drop(idle);
    }
}
