//! A full conntrack table, made on purpose: flows the kernel may not evict
//! to make room, so that new flows are really refused (an unanswered flow
//! would just be evicted early).

use std::time::Duration;

use tokio::net::UdpSocket;

/// `n` UDP flows on 127.0.0.1 (so they stay inside the namespace), 64 per
/// source port, each answered by an echo socket; 2.5 s later each flow
/// carries one more packet, which makes the kernel mark it assured (a UDP
/// flow with a reply, still active after 2 s): an assured entry is never
/// evicted to make room. Then `extra` new flows, which a full table
/// refuses (their sends fail; that is the point).
pub async fn fill_with_assured_flows(n: usize, extra: usize) -> std::io::Result<()> {
    for p in ECHO..ECHO + PORTS {
        let echo = UdpSocket::bind(("127.0.0.1", p)).await?;
        tokio::spawn(async move {
            let mut b = [0u8; 8];
            while let Ok((_, peer)) = echo.recv_from(&mut b).await {
                let _ = echo.send_to(b"y", peer).await;
            }
        });
    }
    let mut port = 10_000u16;
    let senders = open_flows(n, &mut port, true).await?;
    // Still active after 2 s: assured.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (socket, k) in &senders {
        send_each(socket, *k, b"z").await;
    }
    // New flows into the full table.
    open_flows(extra, &mut port, false).await?;
    Ok(())
}

const ECHO: u16 = 30_000;
const PORTS: u16 = 64;

/// `count` new flows, `PORTS` per new source port, one datagram each. With
/// `answered`, each socket's echoes are awaited before the next socket
/// sends, which paces the echo sockets so that every flow sees its reply.
async fn open_flows(
    count: usize,
    port: &mut u16,
    answered: bool,
) -> std::io::Result<Vec<(UdpSocket, u16)>> {
    let mut out = Vec::new();
    let mut left = count;
    while left > 0 {
        *port += 1;
        let socket = UdpSocket::bind(("127.0.0.1", *port)).await?;
        let k = left.min(usize::from(PORTS)) as u16;
        send_each(&socket, k, b"x").await;
        let mut b = [0u8; 8];
        for _ in 0..if answered { k } else { 0 } {
            let answer = socket.recv_from(&mut b);
            if tokio::time::timeout(Duration::from_millis(20), answer)
                .await
                .is_err()
            {
                break;
            }
        }
        out.push((socket, k));
        left -= usize::from(k);
    }
    Ok(out)
}

/// One datagram to each of the first `k` echo ports.
async fn send_each(socket: &UdpSocket, k: u16, payload: &[u8]) {
    for d in ECHO..ECHO + k {
        let _ = socket.send_to(payload, ("127.0.0.1", d)).await;
    }
}
