//! Plain line mode, for scripts and pipes: each line of standard input is
//! sent, each server line is printed as received (on a terminal, with its
//! control characters made harmless). It starts on the least-loaded live
//! edge, as the interactive client does; no reconnect: the client ends
//! with the session. With `--user`, private messages are end-to-end
//! encrypted: `DM` and `HIST @` lines show the opened text after a lock,
//! and what the encryption says is printed as `*** ` lines.

use crate::conn::{self, End, Error, Net};
use crate::e2e::{E2e, Out};
use crate::model::clean;
use shared::line::ServerLine;
use shared::tls::Trust;
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// How long the server has to close the session after the end of input.
const QUIT_WAIT: Duration = Duration::from_secs(10);

pub async fn run(
    servers: &[String],
    trust: &Trust,
    login: Option<String>,
    mut e2e: Option<E2e>,
    balance: bool,
) -> Result<(), Error> {
    // The least-loaded live edge (with `balance`), else the first server
    // that answers.
    let best = if balance {
        conn::place(servers, trust).await
    } else {
        None
    };
    let mut stream = Err(Error::from("no --server given"));
    for server in best.iter().chain(servers) {
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
        conn::session(
            stream,
            login,
            &mut resume,
            timing,
            &mut out_rx,
            &net_tx,
            None,
        )
        .await
    });
    let (in_tx, mut in_rx) = mpsc::channel(conn::QUEUE);
    tokio::spawn(read_input(in_tx));

    let tty = std::io::stdout().is_terminal();
    let mut stdout = tokio::io::stdout();
    let (mut quit_sent, mut quit_by) = (false, None);
    // Lines to send, waiting for room in the connection's queue: the loop
    // goes on reading the server meanwhile (waiting on the queue would
    // stop the connection from taking them), not standard input. At most
    // the lines one key lookup held back.
    let mut to_send: VecDeque<String> = VecDeque::new();
    loop {
        let quit_timer = async {
            match quit_by {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let (shown, outs) = tokio::select! {
            ev = net_rx.recv() => match ev {
                Some(Net::Line(line)) => server_line(e2e.as_mut(), line),
                Some(Net::Notice(text)) => {
                    eprintln!("chat: {text}");
                    continue;
                }
                Some(_) => continue,
                None => break,
            },
            permit = out_tx.reserve(), if !to_send.is_empty() => {
                let Ok(permit) = permit else {
                    break; // the session is over and says why below
                };
                permit.send(to_send.pop_front().expect("not empty"));
                continue;
            }
            line = in_rx.recv(), if quit_by.is_none() && to_send.is_empty() => {
                // At the end of input, log out unless the input did.
                let line = match line {
                    Some(line) => line,
                    None if quit_sent => {
                        quit_by = Some(tokio::time::Instant::now() + QUIT_WAIT);
                        continue;
                    }
                    None => {
                        quit_by = Some(tokio::time::Instant::now() + QUIT_WAIT);
                        "/quit".into()
                    }
                };
                quit_sent |= line.trim().eq_ignore_ascii_case("/quit");
                let outs = match e2e.as_mut() {
                    Some(e2e) => e2e.input(&line),
                    None => vec![Out::Send(line)],
                };
                (None, outs)
            }
            _ = quit_timer => return Ok(()),
        };
        let mut text = String::new();
        for out in outs {
            match out {
                Out::Send(line) => to_send.push_back(line),
                Out::Sent {
                    to, sealed: false, ..
                } => text.push_str(&format!("*** {to} has no key: sent in plain text\n")),
                Out::Sent { .. } => {}
                Out::Notice(t) | Out::Warning(t) => text.push_str(&format!("*** {t}\n")),
            }
        }
        if let Some(line) = shown {
            text.push_str(&line);
            text.push('\n');
        }
        let text = if tty { clean_lines(&text) } else { text };
        let written = stdout.write_all(text.as_bytes()).await;
        if written.is_err() || stdout.flush().await.is_err() {
            return Ok(()); // nobody reads our output any more
        }
    }
    match session.await? {
        End::Refused { code, text } => Err(format!("login failed: {code} {text}").into()),
        End::Broken(why) => Err(why.into()),
        End::Closed(_) | End::Redirected | End::Gone => Ok(()),
    }
}

/// A server line as printed (none: the encryption's own request), and what
/// the encryption does about it: private messages opened, the key
/// published after a login.
fn server_line(e2e: Option<&mut E2e>, line: String) -> (Option<String>, Vec<Out>) {
    let (Some(e2e), Ok(l)) = (e2e, ServerLine::parse(&line)) else {
        return (Some(line), Vec::new());
    };
    let (taken, mut outs) = e2e.on_line(&l);
    if taken {
        return (None, outs);
    }
    let l = match l {
        ServerLine::OkLogin { .. } => {
            outs.extend(e2e.login());
            return (Some(line), outs);
        }
        ServerLine::Dm { id, from, text } => {
            let (text, warning) = e2e.open(&from, &text, true);
            outs.extend(warning);
            ServerLine::Dm { id, from, text }
        }
        ServerLine::Hist { of, id, from, text } if of.starts_with('@') => {
            let (text, warning) = e2e.open(&from, &text, false);
            outs.extend(warning);
            ServerLine::Hist { of, id, from, text }
        }
        _ => return (Some(line), outs),
    };
    (Some(l.to_string()), outs)
}

/// Control characters made harmless, line by line.
fn clean_lines(text: &str) -> String {
    text.lines().map(|l| format!("{}\n", clean(l))).collect()
}

/// Passes on each line of standard input; its end closes the channel.
async fn read_input(lines: mpsc::Sender<String>) -> Result<(), Error> {
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = input.next_line().await? {
        lines.send(line).await?;
    }
    Ok(())
}
