//! `chat`: the bundled client.
//!
//! On a terminal it is a full-screen chat (see `tui.rs`) that reconnects by
//! itself; with `--plain`, or when standard input or output is not a
//! terminal, it sends each input line and prints the server's lines as
//! they are, their control characters replaced on a terminal (see
//! `plain.rs`). Settings come from the command line, then
//! from `$XDG_CONFIG_HOME/chat/config.toml` (or `~/.config/chat/...`).
//! A user given with `--user` gets end-to-end encrypted private messages,
//! its private key in that directory too (see `e2e.rs`).
#![forbid(unsafe_code)]

mod conn;
mod e2e;
mod input;
mod model;
mod plain;
mod tui;

use clap::Parser;
use conn::Error;
use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;
use shared::tls::{self, Trust};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "Chat client: lines you type are sent; /help lists commands."
)]
struct Cli {
    /// Edge to connect to, host:port; repeat it to give others to fall
    /// back on (default localhost:7001).
    #[arg(long, short, env = "CHAT_SERVER", value_delimiter = ',')]
    server: Vec<String>,
    /// CA certificate that signed the servers' certificates (default
    /// certs/ca.pem).
    #[arg(long, env = "CHAT_CA")]
    ca: Option<PathBuf>,
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
    /// Configuration file (default: chat/config.toml in the user's
    /// configuration directory).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Plain line mode: print the server's lines as received (the default
    /// when standard input or output is not a terminal).
    #[arg(long, alias = "raw")]
    plain: bool,
    /// Connect only to the --server addresses, in turn, as given: no
    /// `/edges`, no choosing the least-loaded edge, no following REDIRECT.
    #[arg(long)]
    no_balance: bool,
}

/// The configuration file: the same settings as the command line, which
/// wins. Relative paths are relative to the file's directory.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    servers: Vec<String>,
    ca: Option<PathBuf>,
    pin: Option<String>,
    user: Option<String>,
    password_file: Option<PathBuf>,
}

/// Everything the client runs with.
struct Settings {
    servers: Vec<String>,
    trust: Trust,
    user: Option<String>,
    password_file: Option<PathBuf>,
    plain: bool,
    balance: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = match settings(cli).and_then(|s| rt.block_on(run(s))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    };
    // The threads reading standard input or the terminal cannot be
    // interrupted: do not wait for them once the session is over.
    rt.shutdown_background();
    code
}

fn settings(cli: Cli) -> Result<Settings, Error> {
    let file = match &cli.config {
        Some(path) if !path.exists() => {
            return Err(format!("{}: no such configuration file", path.display()).into())
        }
        Some(path) => read_config(path)?,
        None => match default_config_path() {
            Some(path) if path.exists() => read_config(&path)?,
            _ => FileConfig::default(),
        },
    };
    let servers = if !cli.server.is_empty() {
        cli.server
    } else if !file.servers.is_empty() {
        file.servers
    } else {
        vec!["localhost:7001".into()]
    };
    let trust = match cli.pin.or(file.pin) {
        Some(pin) => Trust::Pin(tls::parse_pin(&pin)?),
        None => {
            let ca = cli.ca.or(file.ca).unwrap_or_else(|| "certs/ca.pem".into());
            Trust::ca_file(&ca).map_err(|e| format!("{}: {e}", ca.display()))?
        }
    };
    let plain = cli.plain || !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal();
    Ok(Settings {
        servers,
        trust,
        user: cli.user.or(file.user),
        password_file: cli.password_file.or(file.password_file),
        plain,
        balance: !cli.no_balance,
    })
}

/// `$XDG_CONFIG_HOME/chat/config.toml`, else `~/.config/chat/config.toml`.
fn default_config_path() -> Option<PathBuf> {
    Some(e2e::config_dir()?.join("config.toml"))
}

fn read_config(path: &Path) -> Result<FileConfig, Error> {
    let mut cfg: FileConfig = Figment::from(Toml::file_exact(path))
        .extract()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for p in [&mut cfg.ca, &mut cfg.password_file].into_iter().flatten() {
        *p = dir.join(&*p);
    }
    Ok(cfg)
}

async fn run(s: Settings) -> Result<(), Error> {
    let user = match &s.user {
        Some(user) => Some(user.clone()),
        None if s.plain => None,
        None => Some(prompt("user: ")?),
    };
    let login = match &user {
        Some(user) => {
            check_user(user)?;
            let env = std::env::var("CHAT_PASSWORD").ok();
            let pw = password(env, s.password_file.as_deref(), user)?;
            Some(format!("LOGIN {user} {pw}"))
        }
        None => None,
    };
    // The keys of end-to-end encryption, for a user known from the start.
    let e2e = match &user {
        Some(user) => {
            let dir = e2e::config_dir().ok_or("no configuration directory: set $HOME")?;
            let max_line = shared::config::EdgeConfig::default().max_line;
            Some(e2e::E2e::load(&dir, user, max_line)?)
        }
        None => None,
    };
    match (user, login, e2e) {
        (Some(user), Some(login), Some(e2e)) if !s.plain => {
            tui::run(s.servers, s.trust, &user, login, e2e, s.balance).await
        }
        (_, login, e2e) => plain::run(&s.servers, &s.trust, login, e2e, s.balance).await,
    }
}

fn prompt(what: &str) -> Result<String, Error> {
    use std::io::Write;
    print!("{what}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// A user name is `[A-Za-z0-9_-]{1,32}`.
fn check_user(user: &str) -> Result<(), Error> {
    if !shared::protocol::is_valid_name(user) {
        return Err(format!("{user:?} is not a user name: 1 to 32 of A-Z a-z 0-9 _ -").into());
    }
    Ok(())
}

/// `env` (`$CHAT_PASSWORD`), else the first line of the password file,
/// else a prompt. A line break would end the `LOGIN` line early.
fn password(env: Option<String>, file: Option<&Path>, user: &str) -> Result<String, Error> {
    let pw = match (env, file) {
        (Some(pw), _) => pw,
        (None, Some(path)) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            text.lines().next().unwrap_or_default().to_string()
        }
        (None, None) => rpassword::prompt_password(format!("password for {user}: "))?,
    };
    if pw.contains(['\r', '\n']) {
        return Err("the password must not contain a line break".into());
    }
    Ok(pw)
}

#[cfg(test)]
mod tests;
