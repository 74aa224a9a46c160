//! "The internet": servers on a public address in the lab's internet
//! namespace, and the client side the harness uses from private hosts.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The internet server's address (TEST-NET-2).
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The internet side of the IGW.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const HTTP_PORT: u16 = 80;
pub const STREAM_PORT: u16 = 9000;

/// HTTP on :80 (`/` answers ok, `/whoami` the caller's address as seen
/// here) and the stream service on :9000. Runs until the runtime stops.
pub async fn serve() -> std::io::Result<()> {
    let http = TcpListener::bind((Ipv4Addr::UNSPECIFIED, HTTP_PORT)).await?;
    let stream = TcpListener::bind((Ipv4Addr::UNSPECIFIED, STREAM_PORT)).await?;
    let app = Router::new().route("/", get(|| async { "ok\n" })).route(
        "/whoami",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("{peer}\n") }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(
            http,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    tokio::spawn(async move {
        while let Ok((socket, _)) = stream.accept().await {
            tokio::spawn(stream_to(socket));
        }
    });
    Ok(())
}

/// Reads "stream MILLIS\n", then sends 8 KiB every 10 ms for that long.
async fn stream_to(socket: TcpStream) {
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let Some(ms) = line
        .trim()
        .strip_prefix("stream ")
        .and_then(|m| m.parse::<u64>().ok())
    else {
        return;
    };
    let mut socket = reader.into_inner();
    let chunk = vec![0x5a_u8; 8192];
    let end = Instant::now() + Duration::from_millis(ms);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while Instant::now() < end {
        tick.tick().await;
        if socket.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = socket.shutdown().await;
}

/// GET `path` from the internet server over HTTP/1.0; the body on 200.
pub async fn http_get(path: &str, timeout: Duration) -> Result<String, String> {
    let work = async {
        let mut s = TcpStream::connect(SocketAddrV4::new(SERVER, HTTP_PORT))
            .await
            .map_err(|e| format!("connect {SERVER}:{HTTP_PORT}: {e}"))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {SERVER}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        match out.split_once("\r\n\r\n") {
            Some((head, body))
                if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
            {
                Ok(body.to_string())
            }
            _ => Err(format!("unexpected answer: {out:?}")),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {SERVER} within {timeout:?}")))
}

/// What a stream download saw.
#[derive(Debug, Clone)]
pub struct StreamReport {
    pub bytes: u64,
    /// Longest time without data, after the first byte.
    pub longest_gap: Duration,
    pub elapsed: Duration,
    pub error: Option<String>,
}

/// Downloads from the stream service for `ms` milliseconds.
pub async fn stream(ms: u64) -> StreamReport {
    let start = Instant::now();
    let mut report = StreamReport {
        bytes: 0,
        longest_gap: Duration::ZERO,
        elapsed: Duration::ZERO,
        error: None,
    };
    let result = async {
        let mut s = TcpStream::connect(SocketAddrV4::new(SERVER, STREAM_PORT))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(format!("stream {ms}\n").as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = vec![0u8; 65536];
        let mut last = None::<Instant>;
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .map_err(|_| "stalled for 10 s".to_string())?
                .map_err(|e| format!("receive: {e}"))?;
            if n == 0 {
                return Ok(());
            }
            let now = Instant::now();
            if let Some(l) = last {
                report.longest_gap = report.longest_gap.max(now - l);
            }
            last = Some(now);
            report.bytes += n as u64;
        }
    }
    .await;
    report.error = result.err();
    report.elapsed = start.elapsed();
    report
}
