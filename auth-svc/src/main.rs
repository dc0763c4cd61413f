//! The auth-svc binary: serves login requests, or administers accounts (`auth-svc user ...`).
#![forbid(unsafe_code)]

use auth_svc::accounts;
use auth_svc::AuthError;
use clap::{Args, Subcommand};
use shared::config::{exit_config, Config};
use shared::service::Failure;
use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

#[derive(Args)]
struct AuthArgs {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve login requests (the default).
    Serve,
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account; the password is read from the terminal or from
    /// one line of standard input.
    Add {
        name: String,
        /// Succeed without change when the account exists.
        #[arg(long)]
        if_missing: bool,
    },
    /// Delete an account.
    Del { name: String },
    /// List accounts.
    List,
    /// Set a new password (read like `add`).
    Passwd { name: String },
}

fn main() -> ExitCode {
    shared::service::main(
        "auth-svc",
        "Chat authentication service, and account administration",
        |_| 0, // a worker per core
        |args: AuthArgs, cfg| async move {
            match args.command.unwrap_or(Command::Serve) {
                Command::Serve => {
                    // A bad key ends it with status 64, before it binds.
                    let opener = shared::seal::Opener::load(&cfg.auth.seal_key_file)
                        .unwrap_or_else(|e| {
                            exit_config("auth-svc", &format!("{e} (run `make certs`?)"))
                        });
                    auth_svc::run(cfg, opener, shared::shutdown::on_signal()).await?
                }
                Command::User(cmd) => user(cfg, cmd).await.map_err(Failure::print)?,
            }
            Ok(())
        },
    )
}

async fn user(cfg: Config, cmd: UserCommand) -> Result<(), AuthError> {
    let redis = shared::store::Redis::connect(&cfg).await?;
    let (mut conn, keys) = (redis.conn, redis.keys);
    let (cost, min_password) = (cfg.auth.bcrypt_cost, cfg.auth.min_password);
    match cmd {
        UserCommand::Add { name, if_missing } => {
            let password = read_password(&format!("password for {name}: "))?;
            accounts::check_password(&password, min_password)?;
            match accounts::add(&mut conn, &keys, &name, &password, cost).await {
                Err(AuthError::Exists(_)) if if_missing => {
                    println!("user {name} exists, left as it is");
                    Ok(())
                }
                Ok(()) => {
                    println!("user {name} added");
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        UserCommand::Del { name } => {
            accounts::delete(&mut conn, &keys, &name).await?;
            println!("user {name} deleted");
            Ok(())
        }
        UserCommand::List => {
            for name in accounts::list(&mut conn, &keys).await? {
                println!("{name}");
            }
            Ok(())
        }
        UserCommand::Passwd { name } => {
            let password = read_password(&format!("new password for {name}: "))?;
            accounts::check_password(&password, min_password)?;
            accounts::set_password(&mut conn, &keys, &name, &password, cost).await?;
            println!("password of {name} changed");
            Ok(())
        }
    }
}

/// From the terminal without echo, else the first line of standard input.
fn read_password(prompt: &str) -> Result<String, AuthError> {
    let line = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line
    };
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
