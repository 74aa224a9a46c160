//! Long-lived connections, as a user's open ones: `n` TCP connections to
//! the internet server's echo port, each sending a byte every `every` and
//! waiting for it back. A connection that errs or goes `patience` without
//! its echo counts as broken, with when and why. What a route move costs
//! users is exactly these.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::internet::{ECHO_PORT, SERVER};

/// A broken connection: its index, when it broke and why.
pub type Broken = (usize, Instant, String);

#[derive(Clone)]
pub struct Held {
    pub opened: Arc<Mutex<usize>>,
    pub broken: Arc<Mutex<Vec<Broken>>>,
    stop: watch::Sender<bool>,
}

impl Held {
    /// Connections tried (those that could not connect count as broken).
    pub fn opened(&self) -> usize {
        *self.opened.lock().expect("held")
    }

    pub fn broken(&self) -> Vec<Broken> {
        self.broken.lock().expect("held").clone()
    }

    /// Connections open and answering now.
    pub fn alive(&self) -> usize {
        self.opened() - self.broken().len()
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Opens the connections (from the caller's namespace) and keeps them
/// busy until [`Held::stop`]. Returns once all are open (or failed to).
pub async fn hold(n: usize, every: Duration, patience: Duration) -> Held {
    hold_to(SERVER.into(), n, every, patience).await
}

/// [`hold`] to `server`: the internet server's address, or its NAT64
/// address from an IPv6 client.
pub async fn hold_to(server: IpAddr, n: usize, every: Duration, patience: Duration) -> Held {
    let (stop, watch) = watch::channel(false);
    let held = Held {
        opened: Arc::default(),
        broken: Arc::default(),
        stop,
    };
    for i in 0..n {
        let held2 = held.clone();
        let mut watch = watch.clone();
        *held.opened.lock().expect("held") += 1;
        match TcpStream::connect((server, ECHO_PORT)).await {
            Ok(mut s) => {
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    let mut buf = [0u8; 1];
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = watch.changed() => return,
                        }
                        let exchange = async {
                            s.write_all(b"x").await?;
                            s.read_exact(&mut buf).await?;
                            Ok::<(), std::io::Error>(())
                        };
                        let why = match tokio::time::timeout(patience, exchange).await {
                            Ok(Ok(())) => continue,
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => format!("no echo within {patience:?}"),
                        };
                        held2
                            .broken
                            .lock()
                            .expect("held")
                            .push((i, Instant::now(), why));
                        return;
                    }
                });
            }
            Err(e) => {
                held.broken
                    .lock()
                    .expect("held")
                    .push((i, Instant::now(), format!("connect: {e}")))
            }
        }
    }
    held
}
