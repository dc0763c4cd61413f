//! A TCP proxy on 127.0.0.1 in front of another local port (a test's
//! Redis) that can black-hole its traffic: while it does, nothing is
//! forwarded either way and nothing is closed (no FIN, no RST), as when a
//! network path goes silent. Lifting it forwards what was held meanwhile,
//! as TCP would once the path is back.

use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// A proxy from its own port to `127.0.0.1:<upstream>`; its tasks end on
/// drop.
pub struct Proxy {
    pub port: u16,
    hole: watch::Sender<bool>,
    accepted: Arc<Mutex<Vec<Instant>>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1, forwarding to `upstream`.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hole, _) = watch::channel(false);
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (hole, accepted, tasks) = (hole.clone(), accepted.clone(), tasks.clone());
            tokio::spawn(async move {
                while let Ok((down, _)) = listener.accept().await {
                    accepted.lock().unwrap().push(Instant::now());
                    // Connected at once, held like the rest while black-holed.
                    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        continue; // dropping `down` closes it, as Redis would refuse it
                    };
                    let _ = (down.set_nodelay(true), up.set_nodelay(true));
                    let (down_rd, down_wr) = down.into_split();
                    let (up_rd, up_wr) = up.into_split();
                    let mut tasks = tasks.lock().unwrap();
                    for (rd, wr) in [(down_rd, up_wr), (up_rd, down_wr)] {
                        let task = tokio::spawn(pump(rd, wr, hole.subscribe()));
                        tasks.push(task.abort_handle());
                    }
                }
            })
        };
        tasks.lock().unwrap().push(accept.abort_handle());
        Proxy {
            port,
            hole,
            accepted,
            tasks,
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops forwarding in both directions, closing nothing; connections
    /// accepted meanwhile are held the same way.
    pub fn black_hole(&self) {
        self.hole.send_replace(true);
    }

    /// Forwards again, what was held first.
    pub fn restore(&self) {
        self.hole.send_replace(false);
    }

    /// How many connections it has accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// When the first connection accepted at or after `t` came, if any.
    pub fn accepted_since(&self, t: Instant) -> Option<Instant> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .copied()
            .find(|&a| a >= t)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// Copies `rd` to `wr` while the path is open; at end of stream passes
/// the FIN on (only while open, too).
async fn pump(mut rd: OwnedReadHalf, mut wr: OwnedWriteHalf, mut hole: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if hole.wait_for(|h| !*h).await.is_err() {
            return;
        }
        let n = tokio::select! {
            // Reading is cancel-safe: nothing read is lost when the hole opens.
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            },
            _ = hole.wait_for(|h| *h) => continue,
        };
        // Read just as the hole opened: held until it closes.
        if hole.wait_for(|h| !*h).await.is_err() {
            return;
        }
        if n == 0 {
            let _ = wr.shutdown().await;
            return;
        }
        if wr.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
