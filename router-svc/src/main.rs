//! The router-svc binary: routes chat traffic until SIGINT or SIGTERM.
#![forbid(unsafe_code)]

use shared::service::{NoArgs, Threads};

fn main() -> std::process::ExitCode {
    shared::service::main(
        "router-svc",
        "Chat router service: rooms, fan-out, history",
        Threads::One,
        |_: NoArgs, cfg| async move {
            router_svc::run(cfg, shared::shutdown::on_signal()).await?;
            Ok(())
        },
    )
}
