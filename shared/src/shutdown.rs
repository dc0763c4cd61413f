//! Process shutdown: SIGINT or SIGTERM cancels a token that every task
//! watches.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGINT or SIGTERM. The handlers
/// are in place when it returns (a signal that comes while the service
/// starts is not lost, nor fatal).
pub fn on_signal() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let t = token.clone();
    let (term, int) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    tokio::spawn(async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM or SIGINT; only Ctrl-C stops");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        t.cancel();
        tracing::info!("shutdown signal received");
    });
    token
}
