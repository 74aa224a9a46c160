//! A minimal HTTP/1.0 GET on a fresh connection: how peers, the lab and
//! the boot test read the agent's endpoints. No keep-alive, no TLS, a
//! bounded answer; enough for documents the agent itself writes.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer read (a /status or /metrics document is far smaller).
const MAX_ANSWER: u64 = 4 << 20;

/// Why a GET got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GetError {
    /// The host answered the connection attempt with a reset: its kernel
    /// is up but nothing listens on the port.
    #[error("connection refused")]
    Refused,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(String),
    #[error("not an HTTP answer: {0}")]
    Malformed(String),
}

/// GET `path` from `host:port` within `timeout`: (status, body).
pub async fn get(
    host: &str,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), GetError> {
    request("GET", host, port, path, timeout).await
}

/// POST to `path` (no body) within `timeout`: (status, body).
pub async fn post(
    host: &str,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), GetError> {
    request("POST", host, port, path, timeout).await
}

async fn request(
    method: &str,
    host: &str,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), GetError> {
    tokio::time::timeout(timeout, request_inner(method, host, port, path))
        .await
        .unwrap_or(Err(GetError::Timeout(timeout)))
}

async fn request_inner(
    method: &str,
    host: &str,
    port: u16,
    path: &str,
) -> Result<(u16, String), GetError> {
    let mut stream = TcpStream::connect((host, port)).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            GetError::Refused
        } else {
            GetError::Io(format!("connect {host}:{port}: {e}"))
        }
    })?;
    let length = if method == "POST" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    let request =
        format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: natron\r\n{length}\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| GetError::Io(format!("send: {e}")))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| GetError::Io(format!("read: {e}")))?;
    parse(&raw)
}

/// (status, body) of a raw HTTP/1.x answer.
pub fn parse(raw: &[u8]) -> Result<(u16, String), GetError> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| GetError::Malformed(format!("{:.60}", text)))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .filter(|_| head.starts_with("HTTP/1."))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| GetError::Malformed(format!("{:.60}", head)))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!(
            parse(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: x\r\n\r\n{\"a\":1}"),
            Ok((503, "{\"a\":1}".into()))
        );
        assert!(matches!(
            parse(b"SSH-2.0\r\n\r\n"),
            Err(GetError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_and_a_server_answers() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        assert_eq!(
            get("127.0.0.1", port, "/", Duration::from_secs(2)).await,
            Err(GetError::Refused)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nok\n").await;
        });
        assert_eq!(
            get("127.0.0.1", port, "/healthz", Duration::from_secs(2)).await,
            Ok((200, "ok\n".into()))
        );
    }
}
