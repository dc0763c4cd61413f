//! `chat`: the bundled command-line client.
//!
//! Connects over TLS (trusting `--ca`, default `certs/ca.pem`, or a pinned
//! certificate with `--pin`), sends each line of standard input, and prints
//! what the server sends: readable on a terminal, as-is (`--raw`, or when
//! the output is not a terminal) for scripts.
#![forbid(unsafe_code)]

use clap::Parser;
use shared::tls::{self, Trust};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// After this long without a line typed, the client sends a `/ping` so that
/// the server's idle timeout (15 minutes by default) does not close it.
const KEEPALIVE: Duration = Duration::from_secs(120);

#[derive(Parser)]
#[command(
    version,
    about = "Chat client: lines you type are sent; /help lists commands."
)]
struct Cli {
    /// Edge to connect to, host:port.
    #[arg(long, short, default_value = "localhost:7001", env = "CHAT_SERVER")]
    server: String,
    /// CA certificate that signed the server's certificate.
    #[arg(long, default_value = "certs/ca.pem", env = "CHAT_CA")]
    ca: PathBuf,
    /// Trust only the certificate with this SHA-256 fingerprint (hex)
    /// instead of a CA.
    #[arg(long)]
    pin: Option<String>,
    /// Log in as this user; the password comes from $CHAT_PASSWORD,
    /// --password-file or a prompt, never from the command line.
    #[arg(long, short)]
    user: Option<String>,
    /// File whose first line is the password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Print server lines exactly as received (the default when standard
    /// output is not a terminal).
    #[arg(long)]
    raw: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    };
    // The thread reading standard input cannot be interrupted: do not wait
    // for it once the session is over.
    rt.shutdown_background();
    code
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let trust = match &cli.pin {
        Some(pin) => Trust::Pin(tls::parse_pin(pin)?),
        None => Trust::ca_file(&cli.ca)?,
    };
    let login = match &cli.user {
        Some(user) => Some(format!("LOGIN {user} {}", password(&cli, user)?)),
        None => None,
    };
    let host = cli
        .server
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or("--server must be host:port")?;
    let tcp = TcpStream::connect(&cli.server)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", cli.server))?;
    let connector = TlsConnector::from(tls::client_config(&trust)?);
    let stream = connector
        .connect(tls::server_name(host)?, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {} failed: {e}", cli.server))?;
    let (rd, mut wr) = tokio::io::split(stream);

    let raw = cli.raw || !std::io::stdout().is_terminal();
    // Keepalive pings (against the server's idle timeout) whose `OK PING`
    // is not shown.
    let keepalives = Arc::new(AtomicUsize::new(0));
    let unanswered = keepalives.clone();
    let printer = tokio::spawn(async move {
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
            let shown = if raw { line } else { pretty(&line) };
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{shown}").and_then(|()| out.flush()).is_err() {
                break; // nobody reads our output any more
            }
        }
    });

    if let Some(login) = login {
        wr.write_all(format!("{login}\n").as_bytes()).await?;
    }
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let mut quit_sent = false;
    let mut printer = printer;
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

fn password(cli: &Cli, user: &str) -> Result<String, Box<dyn std::error::Error>> {
    if let Ok(pw) = std::env::var("CHAT_PASSWORD") {
        return Ok(pw);
    }
    if let Some(path) = &cli.password_file {
        let text = std::fs::read_to_string(path)?;
        return Ok(text.lines().next().unwrap_or_default().to_string());
    }
    Ok(rpassword::prompt_password(format!(
        "password for {user}: "
    ))?)
}

/// A server line for a person: times from message ids, control characters
/// made harmless.
fn pretty(line: &str) -> String {
    let line: String = line
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    let mut parts = line.splitn(2, ' ');
    let kw = parts.next().unwrap_or_default();
    let rest = parts.next().unwrap_or_default();
    let field = |n: usize| -> Vec<&str> { rest.splitn(n, ' ').collect() };
    match kw {
        "MSG" => match field(4).as_slice() {
            [room, id, from, text] => format!("{} #{room} <{from}> {text}", stamp(id)),
            _ => line.clone(),
        },
        "DM" => match field(3).as_slice() {
            [id, from, text] => format!("{} *{from}* {text}", stamp(id)),
            _ => line.clone(),
        },
        "PUB" => match field(3).as_slice() {
            [id, from, text] => format!("{} [{from}] {text}", stamp(id)),
            _ => line.clone(),
        },
        "HIST" => match field(4).as_slice() {
            [conv, id, from, text] if conv.starts_with('@') => {
                format!("{} {conv} <{from}> {text} (history)", stamp(id))
            }
            [room, id, from, text] => format!("{} #{room} <{from}> {text} (history)", stamp(id)),
            _ => line.clone(),
        },
        "SYS" => format!("-- {rest}"),
        "INFO" => format!("   {rest}"),
        "ERR" => format!("!! {rest}"),
        "BYE" => format!("-- disconnected: {rest}"),
        "HELLO" => format!("-- connected to {rest}"),
        _ => format!("   {line}"),
    }
}

/// `[HH:MM:SS]` (UTC) from a `<ms>-<seq>` message id.
fn stamp(id: &str) -> String {
    let ms: u64 = id
        .split('-')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let secs = ms / 1000 % 86_400;
    format!(
        "[{:02}:{:02}:{:02}]",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_lines() {
        assert_eq!(
            pretty("MSG lobby 3723000-0 alice hi there"),
            "[01:02:03] #lobby <alice> hi there"
        );
        assert_eq!(pretty("ERR bad-name no"), "!! bad-name no");
        assert_eq!(
            pretty("MSG lobby 0-0 eve \u{1b}[2Jx"),
            "[00:00:00] #lobby <eve> \u{fffd}[2Jx"
        );
    }
}
