//! What the edge counts ([`Metrics`]), and the admin port's view of it (the [`Probe`] impl).

use crate::ctx::Ctx;
use shared::admin::{Counter, Gauge, Histogram, Page, Probe};

/// What the edge counts, besides the hub's counters.
#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) connections: Gauge,
    pub(crate) logins_ok: Counter,
    pub(crate) logins_failed: Counter,
    pub(crate) lines: Counter,
    /// From a request sent to its reply.
    pub(crate) request_seconds: Histogram,
    /// Connections refused: over the accept rate of their address, over
    /// the connection caps, and over the cap of those not logged in.
    pub(crate) refused_rate: Counter,
    pub(crate) refused_full: Counter,
    pub(crate) refused_unauth: Counter,
    /// Times accepting waited for the edge's accept rate.
    pub(crate) accepts_paced: Counter,
    /// Pub/Sub connections dropped for a backlog over its budget.
    pub(crate) pubsub_overflows: Counter,
}

impl Probe for Ctx {
    async fn healthy(&self) -> bool {
        shared::admin::redis_answers(&self.redis).await
    }

    async fn drain(&self) -> bool {
        self.drain.cancel();
        true
    }

    async fn metrics(&self) -> String {
        let (m, hub) = (&self.metrics, &self.hub);
        Page::default()
            .gauge(
                "chat_edge_connections",
                "Client connections open.",
                m.connections.get(),
            )
            .counters(
                "chat_edge_logins_total",
                "Logins by result.",
                "result",
                &[("ok", m.logins_ok.get()), ("failed", m.logins_failed.get())],
            )
            .counter(
                "chat_edge_lines_total",
                "Lines received from clients.",
                m.lines.get(),
            )
            .counter(
                "chat_edge_pubsub_messages_total",
                "Pub/Sub messages received from Redis.",
                hub.pubsub_messages.get(),
            )
            .counter(
                "chat_edge_deliveries_total",
                "Broadcast lines queued to clients.",
                hub.deliveries.get(),
            )
            .counter(
                "chat_edge_queue_drops_total",
                "Clients closed because their queue was full (too-slow).",
                hub.drops.get(),
            )
            .counter(
                "chat_edge_accepts_paced_total",
                "Times accepting waited for edge.accepts_per_sec.",
                m.accepts_paced.get(),
            )
            .counters(
                "chat_edge_connections_refused_total",
                "Connections refused, by reason.",
                "reason",
                &[
                    ("accept-rate", m.refused_rate.get()),
                    ("connections", m.refused_full.get()),
                    ("not-logged-in", m.refused_unauth.get()),
                ],
            )
            .counter(
                "chat_edge_pubsub_overflows_total",
                "Pub/Sub connections dropped for a backlog over edge.pubsub_backlog_bytes.",
                m.pubsub_overflows.get(),
            )
            .histogram(
                "chat_edge_request_seconds",
                "Time from a request to its reply.",
                &m.request_seconds,
            )
            .finish()
    }
}
