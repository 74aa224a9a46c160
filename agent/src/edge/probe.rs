//! One egress probe: a TCP handshake or an HTTP GET to a target, timed.

use std::time::{Duration, Instant};

use natron_contract::client;
pub use natron_contract::status::ProbeResult;
use tokio::net::TcpStream;

pub use crate::model::probe::ProbeTarget;

/// Probes one target once, within `timeout`.
pub async fn probe(target: &ProbeTarget, timeout: Duration) -> ProbeResult {
    let start = Instant::now();
    let outcome = tokio::time::timeout(timeout, probe_inner(target, timeout))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
    ProbeResult {
        target: target.label(),
        ok: outcome.is_ok(),
        latency_ms: start.elapsed().as_secs_f64() * 1000.0,
        error: outcome.err(),
    }
}

async fn probe_inner(target: &ProbeTarget, timeout: Duration) -> Result<(), String> {
    match target {
        ProbeTarget::Tcp { host, port } => {
            TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            Ok(())
        }
        ProbeTarget::Http { host, port, path } => {
            let (status, _) = client::get(host, *port, path, timeout)
                .await
                .map_err(|e| e.to_string())?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("http status {status}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_and_http_probes_against_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let status = if req.starts_with("GET /ok") {
                        "200 OK"
                    } else {
                        "503 Busy"
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let t = Duration::from_secs(2);
        assert!(
            probe(
                &ProbeTarget::parse(&format!("tcp://127.0.0.1:{port}")).unwrap(),
                t
            )
            .await
            .ok
        );
        assert!(
            probe(
                &ProbeTarget::parse(&format!("http://127.0.0.1:{port}/ok")).unwrap(),
                t
            )
            .await
            .ok
        );
        let r = probe(
            &ProbeTarget::parse(&format!("http://127.0.0.1:{port}/bad")).unwrap(),
            t,
        )
        .await;
        assert!(!r.ok && r.error.unwrap().contains("503"));
        // A closed port fails.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cport = closed.local_addr().unwrap().port();
        drop(closed);
        assert!(
            !probe(
                &ProbeTarget::parse(&format!("tcp://127.0.0.1:{cport}")).unwrap(),
                t
            )
            .await
            .ok
        );
    }
}
