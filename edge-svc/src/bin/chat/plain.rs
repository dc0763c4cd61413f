//! Plain line mode, for scripts and pipes: each line of standard input is
//! sent, each server line is printed exactly as received. No reconnect: the
//! client ends with the session.

use crate::conn::{self, Error};
use shared::tls::Trust;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// After this long without a line typed, the client sends a `/ping` so that
/// the server's idle timeout (15 minutes by default) does not close it.
pub const KEEPALIVE: Duration = Duration::from_secs(120);

pub async fn run(servers: &[String], trust: &Trust, login: Option<String>) -> Result<(), Error> {
    // The first server that answers.
    let mut stream = Err(Error::from("no --server given"));
    for server in servers {
        stream = conn::connect(server, trust).await;
        if stream.is_ok() {
            break;
        }
    }
    let (rd, mut wr) = tokio::io::split(stream?);

    // Keepalive pings whose `OK PING` is not shown.
    let keepalives = Arc::new(AtomicUsize::new(0));
    let unanswered = keepalives.clone();
    let mut printer = tokio::spawn(async move {
        use std::io::Write;
        let mut lines = BufReader::new(rd).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line == "OK PING"
                && unanswered
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
            {
                continue;
            }
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                break; // nobody reads our output any more
            }
        }
    });

    if let Some(login) = login {
        wr.write_all(format!("{login}\n").as_bytes()).await?;
    }
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let mut quit_sent = false;
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.reset();
    let mut typed = false;
    loop {
        tokio::select! {
            _ = &mut printer => return Ok(()),
            _ = keepalive.tick() => {
                if !std::mem::take(&mut typed) {
                    keepalives.fetch_add(1, Ordering::Relaxed);
                    wr.write_all(b"/ping\n").await?;
                }
            }
            line = input.next_line() => match line? {
                Some(line) => {
                    typed = true;
                    quit_sent |= line.trim().eq_ignore_ascii_case("/quit");
                    wr.write_all(format!("{line}\n").as_bytes()).await?;
                }
                None => break,
            },
        }
    }
    // End of input: log out and show what the server still sends.
    if !quit_sent {
        let _ = wr.write_all(b"/quit\n").await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), printer).await;
    Ok(())
}
