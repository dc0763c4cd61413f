//! Per-publisher order with two edges and two routers: room text and
//! publications mixed, sent as fast as the clients can.

use e2e::{Client, Shape, System};
use shared::line::ServerLine;
use std::collections::HashMap;

const N: usize = 500;
const PUBLISHERS: [&str; 3] = ["pa", "pb", "pc"];

/// What one publisher sends: even numbers published, odd ones said.
fn lines_of(publisher: &str) -> String {
    (0..N)
        .map(|n| {
            if n % 2 == 0 {
                format!("/publish {publisher} {n}\n")
            } else {
                format!("{publisher} {n}\n")
            }
        })
        .collect()
}

/// Reads until `want` room lines and publications have come; checks that
/// each publisher's numbers arrive once each, strictly increasing, and
/// returns how many came from each (as MSG, as PUB).
async fn receive(mut c: Client, want: usize) -> HashMap<String, (usize, usize)> {
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    let mut got = 0;
    while got < want {
        let line = c.parsed().await;
        let (text, said) = match &line {
            ServerLine::Msg { text, .. } => (text, true),
            ServerLine::Pub { text, .. } => (text, false),
            ServerLine::OkPublish { .. } => continue,
            other => panic!("{other}"),
        };
        let (from, n) = text.split_once(' ').unwrap();
        let n: usize = n.parse().unwrap();
        if let Some(prev) = last.insert(from.to_string(), n) {
            assert!(n > prev, "{from}: {n} after {prev}");
        }
        let entry = counts.entry(from.to_string()).or_default();
        if said {
            assert_eq!(n % 2, 1, "{line}");
            entry.0 += 1;
        } else {
            assert_eq!(n % 2, 0, "{line}");
            entry.1 += 1;
        }
        got += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recipient_sees_each_publishers_messages_once_and_in_order() {
    let shape = Shape::new(2, 2, 2);
    let sys = System::start_with(shape, |_| {}).await;
    let listeners = ["la", "lb"];
    for u in PUBLISHERS.iter().chain(&listeners) {
        sys.add_user(u).await;
    }
    sys.routers_own_partitions(2).await;

    // Everyone subscribes to every publisher but itself.
    let mut publishers = Vec::new();
    for (i, p) in PUBLISHERS.iter().enumerate() {
        let mut c = sys.login(i % 2, p).await;
        for other in PUBLISHERS.iter().filter(|o| *o != p) {
            c.ask(&format!("/subscribe {other}")).await;
        }
        publishers.push(c);
    }
    let mut readers = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        let mut c = sys.login(i % 2, l).await;
        for p in PUBLISHERS {
            c.ask(&format!("/subscribe {p}")).await;
        }
        // All of the three publishers' lines.
        readers.push(tokio::spawn(receive(c, 3 * N)));
    }
    let (said, published) = (N / 2, N / 2);
    let mut senders = Vec::new();
    for (p, mut c) in PUBLISHERS.iter().zip(publishers) {
        senders.push(tokio::spawn(async move {
            c.send_raw(lines_of(p).as_bytes()).await;
            // Everyone's room text, and the others' publications.
            receive(c, 3 * said + 2 * published).await
        }));
    }
    for (i, task) in senders.into_iter().enumerate() {
        let counts = task.await.unwrap();
        for p in PUBLISHERS {
            let want = if p == PUBLISHERS[i] {
                (said, 0)
            } else {
                (said, published)
            };
            assert_eq!(counts[p], want, "{} receiving {p}", PUBLISHERS[i]);
        }
    }
    for task in readers {
        let counts = task.await.unwrap();
        for p in PUBLISHERS {
            assert_eq!(counts[p], (said, published), "a listener receiving {p}");
        }
    }
}
