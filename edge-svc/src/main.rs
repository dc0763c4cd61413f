//! The edge-svc binary: serves chat clients over TLS until SIGINT or SIGTERM.
#![forbid(unsafe_code)]

use shared::config::exit_config;
use shared::service::{Failure, NoArgs};

fn main() -> std::process::ExitCode {
    shared::service::main(
        "edge-svc",
        "Chat edge: the TLS listener clients connect to",
        |cfg| cfg.edge.threads,
        |_: NoArgs, cfg| async move {
            let tls = shared::tls::server_config(&cfg.edge.tls_cert, &cfg.edge.tls_key)
                .unwrap_or_else(|e| exit_config("edge-svc", &format!("{e} (run `make certs`?)")));
            let sealer = shared::seal::Sealer::load(&cfg.edge.auth_public_key_file)
                .unwrap_or_else(|e| exit_config("edge-svc", &format!("{e} (run `make certs`?)")));
            let listener = tokio::net::TcpListener::bind(&cfg.edge.listen)
                .await
                .map_err(|e| {
                    Failure::print(format!("cannot listen on {}: {e}", cfg.edge.listen))
                })?;
            edge_svc::run(listener, cfg, tls, sealer, shared::shutdown::on_signal()).await?;
            Ok(())
        },
    )
}
