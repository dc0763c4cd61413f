//! Plain line mode, for scripts and pipes: each line of standard input is
//! sent, each server line is printed as received (on a terminal, with its
//! control characters made harmless). No reconnect: the client ends with
//! the session.

use crate::conn::{self, End, Error, Net};
use crate::model::clean;
use shared::tls::Trust;
use std::io::IsTerminal;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// How long the server has to close the session after the end of input.
const QUIT_WAIT: Duration = Duration::from_secs(10);

pub async fn run(servers: &[String], trust: &Trust, login: Option<String>) -> Result<(), Error> {
    // The first server that answers.
    let mut stream = Err(Error::from("no --server given"));
    for server in servers {
        stream = conn::connect(server, trust).await;
        if stream.is_ok() {
            break;
        }
    }
    let stream = stream?;
    let (out_tx, mut out_rx) = mpsc::channel(conn::QUEUE);
    let (net_tx, mut net_rx) = mpsc::channel(conn::QUEUE);
    let session = tokio::spawn(async move {
        let timing = conn::Timing::default();
        // One session, no reconnect: its resume token is of no use.
        let mut resume = conn::Resume::default();
        let login = login.as_deref();
        conn::session(stream, login, &mut resume, timing, &mut out_rx, &net_tx).await
    });
    let mut input = tokio::spawn(send_input(out_tx));

    let tty = std::io::stdout().is_terminal();
    let mut stdout = tokio::io::stdout();
    let mut quit_by = None;
    loop {
        let quit_timer = async {
            match quit_by {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = net_rx.recv() => match ev {
                Some(Net::Line(line)) => {
                    let line = if tty { clean(&line) } else { line };
                    let written = stdout.write_all(format!("{line}\n").as_bytes()).await;
                    if written.is_err() || stdout.flush().await.is_err() {
                        return Ok(()); // nobody reads our output any more
                    }
                }
                Some(Net::Notice(text)) => eprintln!("chat: {text}"),
                Some(_) => {}
                None => break,
            },
            _ = &mut input, if quit_by.is_none() => {
                quit_by = Some(tokio::time::Instant::now() + QUIT_WAIT);
            }
            _ = quit_timer => return Ok(()),
        }
    }
    match session.await? {
        End::Refused { code, text } => Err(format!("login failed: {code} {text}").into()),
        End::Broken(why) => Err(why.into()),
        End::Closed(_) | End::Gone => Ok(()),
    }
}

/// Sends each line of standard input; at its end, logs out (`/quit`)
/// unless the input did.
async fn send_input(out: mpsc::Sender<String>) -> Result<(), Error> {
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let mut quit_sent = false;
    while let Some(line) = input.next_line().await? {
        quit_sent |= line.trim().eq_ignore_ascii_case("/quit");
        out.send(line).await?;
    }
    if !quit_sent {
        out.send("/quit".into()).await?;
    }
    Ok(())
}
