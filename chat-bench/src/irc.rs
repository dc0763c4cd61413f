//! `fanout` against an IRC daemon on this machine (InspIRCd, which `--irc` starts): the same clients, senders, rates and tallies, spoken in IRC, so that a single-process daemon is measured with the same generator as the system.

use crate::load::{self, Error, Reader, Writer, IRC_CHANNEL};
use crate::scenarios::{measure, Against, Meta, Run, Timing, Traffic};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The daemon's configuration, its placeholders filled in by [`Ircd::start`].
const CONFIG: &str = include_str!("../inspircd.conf");
/// Longest wait for the daemon to listen, and for one reply while setting up.
const WAIT: Duration = Duration::from_secs(30);

/// A running IRC daemon, stopped when dropped.
pub struct Ircd {
    child: Child,
    addr: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Ircd {
    /// Starts `program` (InspIRCd 3) in `dir`, on a free loopback port,
    /// with a certificate that `bin`'s chat-certs makes.
    pub async fn start(program: &str, bin: &Path, dir: &Path) -> Result<Ircd, Error> {
        std::fs::create_dir_all(dir)?;
        let dir = std::fs::canonicalize(dir)?;
        let certs = dir.join("certs");
        let made = std::process::Command::new(bin.join("chat-certs"))
            .arg(&certs)
            .output()?;
        if !made.status.success() {
            return Err(String::from_utf8_lossy(&made.stderr).into_owned().into());
        }
        let port = e2e::free_port();
        let config = CONFIG
            .replace("{port}", &port.to_string())
            .replace("{cert}", &certs.join("server.pem").display().to_string())
            .replace("{key}", &certs.join("server-key.pem").display().to_string())
            .replace("{dir}", &dir.display().to_string());
        let file = dir.join("inspircd.conf");
        std::fs::write(&file, config)?;
        let out = dir.join("ircd.out");
        let log = std::fs::File::create(&out)?;
        let mut cmd = Command::new(program);
        cmd.arg("--nofork")
            .arg(format!("--config={}", file.display()))
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        // InspIRCd refuses to run as root unless told.
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        });
        if root {
            cmd.arg("--runasroot");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{program}: {e} (apt-get install inspircd)"))?;
        let addr = format!("127.0.0.1:{port}");
        let failed = |why: &str| format!("{program} {why} (see {})", out.display());
        let listening = async {
            while tokio::net::TcpStream::connect(&addr).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            listened = tokio::time::timeout(WAIT, listening) => {
                listened.map_err(|_| failed(&format!("did not listen on {addr}")))?;
            }
            status = child.wait() => return Err(failed(&format!("exited: {}", status?)).into()),
        }
        let trust = shared::tls::Trust::ca_file(&certs.join("ca.pem"))?;
        let tls = shared::tls::client_config(&trust)?;
        Ok(Ircd { child, addr, tls })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// Reads lines until one that contains `needle`; errors on `ERROR`, the
/// end, or a long wait.
async fn until(rd: &mut Reader, needle: &str) -> Result<(), Error> {
    loop {
        let line = tokio::time::timeout(WAIT, rd.line())
            .await
            .map_err(|_| format!("no {needle:?} in time"))??
            .ok_or("connection closed")?;
        let line = String::from_utf8_lossy(&line);
        if line.starts_with("ERROR") {
            return Err(line.into_owned().into());
        }
        if line.contains(needle) {
            return Ok(());
        }
    }
}

/// A registered client, nick `nick`, in the channel.
async fn join(ircd: &Ircd, nick: String) -> Result<(Reader, Writer), Error> {
    let (mut rd, mut wr) = load::connect_tls(&ircd.addr, &ircd.tls, None).await?;
    wr.send(format!("NICK {nick}\r\nUSER {nick} 0 * :chat-bench\r\n").as_bytes())
        .await?;
    until(&mut rd, &format!(" 001 {nick} ")).await?;
    wr.send(format!("JOIN {IRC_CHANNEL}\r\n").as_bytes())
        .await?;
    // The end of the channel's names: the join is done.
    until(&mut rd, &format!(" 366 {nick} ")).await?;
    Ok((rd, wr))
}

/// `fanout` on the daemon (one started for this run: nothing of another
/// run is in it): `clients` in one channel, `senders` of them sending. A sender does not hear its own lines in IRC, so each is heard
/// by the `clients - 1` others.
pub async fn fanout(
    ircd: &Ircd,
    clients: usize,
    senders: usize,
    rate: f64,
    timing: Timing,
) -> Result<Traffic, Error> {
    let conns: Vec<(Reader, Writer)> = stream::iter(0..clients)
        .map(|i| join(ircd, format!("fan-{i}")))
        .buffered(64)
        .try_collect()
        .await?;
    let run = Run::new(timing);
    let mut receivers = Vec::new();
    let mut sinks = Vec::new();
    for (i, (rd, wr)) in conns.into_iter().enumerate() {
        let mut tally = run.tally(senders);
        tally.read = load::seen_irc;
        receivers.push(tokio::spawn(load::receive(rd, tally, run.stop.clone())));
        if i < senders {
            sinks.push(wr);
        }
    }
    let meta = Meta {
        scenario: "fanout (IRC)".into(),
        clients,
        rate,
        format: load::privmsg,
        listeners: vec![clients as u64 - 1; senders],
    };
    let pids = vec![
        ("ircd".to_string(), ircd.pid()),
        ("chat-bench".to_string(), std::process::id()),
    ];
    measure(Against::Processes(pids), run, receivers, sinks, meta).await
}
