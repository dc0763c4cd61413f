//! Where a client should connect: the live edges' loads, the least loaded
//! (ties broken at random), when an edge is loaded enough to redirect, and
//! how a draining edge spreads its clients (pure; the client, the edge and
//! chat-bench share it).

use std::hash::{BuildHasher, RandomState};

/// One live edge as `/edges` lists it: `EDGE <addr> <conns>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeLoad {
    pub addr: String,
    pub conns: u64,
}

/// A random number below `n` (at least 1), from the standard library's
/// randomly keyed hasher: enough to break ties and jitter, no crate.
pub fn random_below(n: u64) -> u64 {
    RandomState::new().hash_one(()) % n.max(1)
}

/// The least-loaded edge of `edges` other than `except`, ties broken at
/// random.
pub fn least_loaded<'a>(edges: &'a [EdgeLoad], except: Option<&str>) -> Option<&'a EdgeLoad> {
    let others = || edges.iter().filter(|e| Some(e.addr.as_str()) != except);
    let least = others().map(|e| e.conns).min()?;
    let tied: Vec<&EdgeLoad> = others().filter(|e| e.conns == least).collect();
    Some(tied[random_below(tied.len() as u64) as usize])
}

/// Takes the connection that asked `/edges` of the edge at `asked` off
/// that edge's count: a client choosing does not count where it asked.
pub fn discount(edges: &mut [EdgeLoad], asked: &str) {
    if let Some(e) = edges.iter_mut().find(|e| e.addr == asked) {
        e.conns = e.conns.saturating_sub(1);
    }
}

/// Where a new connection to the edge at `own` (holding `own_conns`)
/// should go instead, if anywhere: when this edge holds more than
/// `above_pct` percent above the mean of the live edges `edges` and at
/// least `min_excess` more than it, the least-loaded other edge (if it
/// holds fewer). Both 0: never.
pub fn redirect(
    edges: &[EdgeLoad],
    own: &str,
    own_conns: u64,
    above_pct: u32,
    min_excess: u32,
) -> Option<String> {
    if above_pct == 0 && min_excess == 0 {
        return None;
    }
    let others: Vec<&EdgeLoad> = edges.iter().filter(|e| e.addr != own).collect();
    if others.is_empty() {
        return None;
    }
    let total: u64 = others.iter().map(|e| e.conns).sum::<u64>() + own_conns;
    let mean = total as f64 / (others.len() + 1) as f64;
    let excess = own_conns as f64 - mean;
    let over = excess > mean * f64::from(above_pct) / 100.0 && excess >= f64::from(min_excess);
    let target = least_loaded(edges, Some(own))?;
    (over && target.conns < own_conns).then(|| target.addr.clone())
}

/// Hints for `n` clients leaving a draining edge, spread over the other
/// live edges `others` so that their loads even out (each hint goes to the
/// edge least loaded once the hints before it are counted).
pub fn spread(others: &[EdgeLoad], n: usize) -> Vec<String> {
    let mut loads = others.to_vec();
    let mut hints = Vec::with_capacity(n);
    for _ in 0..n {
        let Some(next) = least_loaded(&loads, None).map(|e| e.addr.clone()) else {
            break;
        };
        if let Some(e) = loads.iter_mut().find(|e| e.addr == next) {
            e.conns += 1;
        }
        hints.push(next);
    }
    hints
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(loads: &[(&str, u64)]) -> Vec<EdgeLoad> {
        loads
            .iter()
            .map(|(a, c)| EdgeLoad {
                addr: a.to_string(),
                conns: *c,
            })
            .collect()
    }

    #[test]
    fn the_least_loaded_wins_and_ties_are_broken_at_random() {
        let list = edges(&[("a:1", 5), ("b:1", 2), ("c:1", 2)]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(least_loaded(&list, None).unwrap().addr.clone());
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(!seen.contains("a:1"));
        assert_eq!(least_loaded(&list, Some("b:1")).unwrap().addr, "c:1");
        assert!(least_loaded(&[], None).is_none());
        let mut asked = edges(&[("a:1", 3), ("b:1", 3)]);
        discount(&mut asked, "a:1");
        assert_eq!(least_loaded(&asked, None).unwrap().addr, "a:1");
    }

    #[test]
    fn redirects_only_well_above_the_mean() {
        let list = edges(&[("a:1", 0), ("b:1", 10), ("c:1", 20)]);
        // Mean of 130, 10, 20: 53.3; 130 is 76.7 above it (over 20 %, over 50).
        assert_eq!(redirect(&list, "a:1", 130, 20, 50).as_deref(), Some("b:1"));
        // 60 is above the mean by 30 % but by fewer than 50 connections.
        assert_eq!(redirect(&list, "a:1", 60, 20, 50), None);
        // Alone: nowhere to go.
        assert_eq!(redirect(&edges(&[("a:1", 9)]), "a:1", 500, 20, 50), None);
        // Both thresholds 0: never.
        assert_eq!(redirect(&list, "a:1", 1000, 0, 0), None);
    }

    #[test]
    fn a_drain_evens_out_the_other_edges() {
        let hints = spread(&edges(&[("b:1", 10), ("c:1", 0)]), 20);
        let to_b = hints.iter().filter(|h| *h == "b:1").count();
        assert_eq!(hints.len(), 20);
        assert_eq!(to_b, 5, "{hints:?}"); // both end at 15
        assert!(spread(&[], 3).is_empty());
    }
}
