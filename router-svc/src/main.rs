//! The router-svc binary: routes chat traffic until SIGINT or SIGTERM.
#![forbid(unsafe_code)]

use shared::service::NoArgs;

fn main() -> std::process::ExitCode {
    shared::service::main(
        "router-svc",
        "Chat router service: rooms, fan-out, history",
        // One thread: its work is one loop of round trips to Redis, where
        // worker threads would only wake each other.
        |_| 1,
        |_: NoArgs, cfg| async move {
            router_svc::run(cfg, shared::shutdown::on_signal()).await?;
            Ok(())
        },
    )
}
