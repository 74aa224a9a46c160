//! "The internet": servers on a public address in the lab's internet
//! namespace, and the client side the harness uses from private hosts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
/// The server's IPv6 address, behind the VPC's egress-only gateway (whose
/// address on that link is [`GATEWAY6`]).
pub const SERVER6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 6, 0, 0, 0, 0, 0x10);
pub const GATEWAY6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 6, 0, 0, 0, 0, 1);
pub const HTTP_PORT: u16 = 80;
pub const STREAM_PORT: u16 = 9000;
/// Echoes every byte back, for connections held open across events.
pub const ECHO_PORT: u16 = 9001;
/// Bulk transfers both ways (see [`download`] and [`upload`]).
pub const BULK_PORT: u16 = 9002;
/// Echoes every UDP datagram back.
pub const UDP_ECHO_PORT: u16 = 9003;

/// HTTP on :80 (`/` answers ok, `/whoami` the caller's address as seen
/// here; on IPv4 and at [`SERVER6`]) and the stream service on :9000. Runs
/// until the runtime stops.
pub async fn serve() -> std::io::Result<()> {
    let http = TcpListener::bind((Ipv4Addr::UNSPECIFIED, HTTP_PORT)).await?;
    let http6 = TcpListener::bind((SERVER6, HTTP_PORT)).await?;
    let stream = TcpListener::bind((Ipv4Addr::UNSPECIFIED, STREAM_PORT)).await?;
    let echo = TcpListener::bind((Ipv4Addr::UNSPECIFIED, ECHO_PORT)).await?;
    let bulk = TcpListener::bind((Ipv4Addr::UNSPECIFIED, BULK_PORT)).await?;
    let udp = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_ECHO_PORT)).await?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&buf[..n], from).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((socket, _)) = bulk.accept().await {
            tokio::spawn(bulk_serve(socket));
        }
    });
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let app = Router::new().route("/", get(|| async { "ok\n" })).route(
        "/whoami",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("{peer}\n") }),
    );
    for listener in [http, http6] {
        let app = app.clone();
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
    }
    tokio::spawn(async move {
        while let Ok((socket, _)) = stream.accept().await {
            tokio::spawn(stream_to(socket));
        }
    });
    Ok(())
}

/// Reads "get N\n" (then sends N bytes and closes) or "put N\n" (then
/// reads N bytes and answers "ok\n").
async fn bulk_serve(socket: TcpStream) {
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let mut words = line.split_whitespace();
    let (Some(verb), Some(Ok(n))) = (words.next(), words.next().map(str::parse::<u64>)) else {
        return;
    };
    match verb {
        "get" => {
            let mut socket = reader.into_inner();
            let _ = send_bytes(&mut socket, n).await;
            let _ = socket.shutdown().await;
        }
        "put" => {
            let got = tokio::io::copy(&mut (&mut reader).take(n), &mut tokio::io::sink()).await;
            if got.ok() == Some(n) {
                let _ = reader.into_inner().write_all(b"ok\n").await;
            }
        }
        _ => {}
    }
}

async fn send_bytes(socket: &mut TcpStream, mut n: u64) -> std::io::Result<()> {
    let chunk = vec![0xa5_u8; 65536];
    while n > 0 {
        let k = n.min(chunk.len() as u64) as usize;
        socket.write_all(&chunk[..k]).await?;
        n -= k as u64;
    }
    Ok(())
}

/// Downloads `bytes` from the bulk service; Err when the transfer stalls
/// for `stall` (what a black-holed path looks like) or breaks, naming how
/// far it got.
pub async fn download(bytes: u64, stall: Duration) -> Result<Duration, String> {
    download_from(SERVER.into(), bytes, stall).await
}

/// [`download`] from the bulk service at `server` (the internet server's
/// address, or its NAT64 address).
pub async fn download_from(
    server: IpAddr,
    bytes: u64,
    stall: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut s = connect_bulk(server, stall).await?;
    s.write_all(format!("get {bytes}\n").as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 65536];
    let mut got = 0u64;
    while got < bytes {
        let n = tokio::time::timeout(stall, s.read(&mut buf))
            .await
            .map_err(|_| format!("download stalled for {stall:?} after {got} of {bytes} bytes"))?
            .map_err(|e| format!("download: {e} after {got} of {bytes} bytes"))?;
        if n == 0 {
            return Err(format!("download closed after {got} of {bytes} bytes"));
        }
        got += n as u64;
    }
    Ok(start.elapsed())
}

/// Uploads `bytes` to the bulk service and waits for its "ok"; Err as for
/// [`download`].
pub async fn upload(bytes: u64, stall: Duration) -> Result<Duration, String> {
    upload_to(SERVER.into(), bytes, stall).await
}

/// [`upload`] to the bulk service at `server` (the internet server's
/// address, or its NAT64 address).
pub async fn upload_to(server: IpAddr, bytes: u64, stall: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let s = connect_bulk(server, stall).await?;
    let (mut r, mut w) = s.into_split();
    let sender = tokio::spawn(async move {
        w.write_all(format!("put {bytes}\n").as_bytes()).await?;
        let chunk = vec![0x5a_u8; 65536];
        let mut left = bytes;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..k]).await?;
            left -= k as u64;
        }
        Ok::<_, std::io::Error>(w)
    });
    // The answer comes once the server has every byte; a stalled path
    // never lets it.
    let deadline = stall + Duration::from_secs(bytes / (1 << 20));
    let mut answer = [0u8; 3];
    let read = tokio::time::timeout(deadline, r.read_exact(&mut answer)).await;
    sender.abort();
    match read {
        Ok(Ok(_)) if &answer == b"ok\n" => Ok(start.elapsed()),
        Ok(Ok(_)) => Err(format!(
            "upload of {bytes} bytes: unexpected answer {answer:?}"
        )),
        Ok(Err(e)) => Err(format!("upload of {bytes} bytes: {e}")),
        Err(_) => Err(format!(
            "upload of {bytes} bytes not acknowledged within {deadline:?} (stalled)"
        )),
    }
}

async fn connect_bulk(server: IpAddr, timeout: Duration) -> Result<TcpStream, String> {
    let addr = SocketAddr::new(server, BULK_PORT);
    tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect {addr}: timed out"))?
        .map_err(|e| format!("connect {addr}: {e}"))
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
    http_get_from(SERVER.into(), path, timeout).await
}

/// [`http_get`] from `server` (the internet server's address, or its
/// NAT64 address).
pub async fn http_get_from(
    server: IpAddr,
    path: &str,
    timeout: Duration,
) -> Result<String, String> {
    match natron_contract::client::get(&server.to_string(), HTTP_PORT, path, timeout).await {
        Ok((200, body)) => Ok(body),
        Ok((code, body)) => Err(format!("{server}{path}: HTTP {code}: {body:?}")),
        Err(e) => Err(format!("{server} port {HTTP_PORT}{path}: {e}")),
    }
}

/// One datagram to the UDP echo service at `server`, from `from` (any
/// address of the caller's when None): the round trip, or Err when no
/// echo comes within `timeout`.
pub async fn udp_echo(
    server: IpAddr,
    from: Option<IpAddr>,
    timeout: Duration,
) -> Result<Duration, String> {
    let local = from.unwrap_or(match server {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    });
    let sock = tokio::net::UdpSocket::bind((local, 0))
        .await
        .map_err(|e| format!("bind {local}: {e}"))?;
    let start = Instant::now();
    let to = SocketAddr::new(server, UDP_ECHO_PORT);
    sock.send_to(b"natron", to)
        .await
        .map_err(|e| format!("send to {to}: {e}"))?;
    let mut buf = [0u8; 64];
    let (n, _) = tokio::time::timeout(timeout, sock.recv_from(&mut buf))
        .await
        .map_err(|_| format!("no echo from {to} within {timeout:?}"))?
        .map_err(|e| format!("receive from {to}: {e}"))?;
    (buf[..n] == *b"natron")
        .then(|| start.elapsed())
        .ok_or_else(|| format!("{to} echoed {:?}", &buf[..n]))
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
        let mut s = TcpStream::connect(SocketAddr::new(SERVER.into(), STREAM_PORT))
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
