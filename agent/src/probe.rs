//! Egress health: probe targets, one probe, and the rise/fall counter that
//! turns noisy rounds into a stable healthy/failed state.

use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper::body::Bytes;
use serde::Serialize;
use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProbeTarget {
    /// A TCP handshake to HOST:PORT.
    Tcp { host: String, port: u16 },
    /// An HTTP/1.1 GET answered with a 2xx or 3xx status.
    Http {
        host: String,
        port: u16,
        path: String,
    },
}

impl ProbeTarget {
    pub fn parse(text: &str) -> Result<ProbeTarget, String> {
        if let Some(rest) = text.strip_prefix("tcp://") {
            let (host, port) = split_host_port(rest, None)
                .ok_or_else(|| format!("{text:?}: expected tcp://HOST:PORT"))?;
            return Ok(ProbeTarget::Tcp { host, port });
        }
        if let Some(rest) = text.strip_prefix("http://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let (host, port) = split_host_port(authority, Some(80))
                .ok_or_else(|| format!("{text:?}: expected http://HOST[:PORT]/PATH"))?;
            return Ok(ProbeTarget::Http {
                host,
                port,
                path: path.to_string(),
            });
        }
        Err(format!("{text:?}: a target starts with tcp:// or http://"))
    }

    pub fn label(&self) -> String {
        match self {
            ProbeTarget::Tcp { host, port } => format!("tcp://{host}:{port}"),
            ProbeTarget::Http { host, port, path } => format!("http://{host}:{port}{path}"),
        }
    }
}

fn split_host_port(text: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (text, default_port?),
    };
    if host.is_empty() || port == 0 || host.contains(['/', ' ', '@']) {
        return None;
    }
    Some((host.to_string(), port))
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub target: String,
    pub ok: bool,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Probes one target once, within `timeout`.
pub async fn probe(target: &ProbeTarget, timeout: Duration) -> ProbeResult {
    let start = Instant::now();
    let outcome = tokio::time::timeout(timeout, probe_inner(target))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
    ProbeResult {
        target: target.label(),
        ok: outcome.is_ok(),
        latency_ms: start.elapsed().as_secs_f64() * 1000.0,
        error: outcome.err(),
    }
}

async fn probe_inner(target: &ProbeTarget) -> Result<(), String> {
    match target {
        ProbeTarget::Tcp { host, port } => {
            TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            Ok(())
        }
        ProbeTarget::Http { host, port, path } => {
            let (status, _) = http_get(host, *port, path).await?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("http status {status}"))
            }
        }
    }
}

/// One HTTP/1.1 GET on a fresh connection: (status, body). No timeout of
/// its own; callers wrap it.
pub async fn http_get(host: &str, port: u16, path: &str) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("http: {e}"))?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header("host", host)
        .header(
            "user-agent",
            concat!("natron-agent/", env!("CARGO_PKG_VERSION")),
        )
        .header("connection", "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("http request: {e}"))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("http: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("http body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
    .await;
    conn.abort();
    result
}

/// Rise/fall hysteresis: `rise` passing rounds in a row make a failed
/// state healthy, `fall` failing rounds in a row make a healthy one failed.
/// It starts failed: egress is unproven until it has passed.
#[derive(Debug, Clone, Serialize)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    pub healthy: bool,
    streak: u32,
}

impl RiseFall {
    pub fn new(rise: u32, fall: u32) -> Self {
        RiseFall {
            rise,
            fall,
            healthy: false,
            streak: 0,
        }
    }

    /// Records one round; returns true when the state changed.
    pub fn observe(&mut self, pass: bool) -> bool {
        if pass == self.healthy {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if pass { self.rise } else { self.fall };
        if self.streak >= needed {
            self.healthy = pass;
            self.streak = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            ProbeTarget::parse("tcp://1.1.1.1:443").unwrap(),
            ProbeTarget::Tcp {
                host: "1.1.1.1".into(),
                port: 443
            }
        );
        assert_eq!(
            ProbeTarget::parse("http://checkip.amazonaws.com").unwrap(),
            ProbeTarget::Http {
                host: "checkip.amazonaws.com".into(),
                port: 80,
                path: "/".into()
            }
        );
        assert_eq!(
            ProbeTarget::parse("http://198.51.100.10:8080/health?x=1")
                .unwrap()
                .label(),
            "http://198.51.100.10:8080/health?x=1"
        );
        for bad in [
            "tcp://host",
            "tcp://:80",
            "https://x/",
            "udp://a:1",
            "tcp://a:0",
            "tcp://a:99999",
        ] {
            assert!(ProbeTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rise_fall_hysteresis() {
        let mut rf = RiseFall::new(2, 3);
        assert!(!rf.healthy);
        assert!(!rf.observe(true));
        assert!(rf.observe(true));
        assert!(rf.healthy);
        // Two failures then a pass: still healthy, streak reset.
        rf.observe(false);
        rf.observe(false);
        rf.observe(true);
        assert!(rf.healthy);
        rf.observe(false);
        rf.observe(false);
        assert!(rf.observe(false));
        assert!(!rf.healthy);
    }

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
