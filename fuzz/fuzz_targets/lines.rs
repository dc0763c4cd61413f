//! Any bytes, cut anywhere, through the edge's line framer and parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose how the rest is cut into reads.
    let (cuts, rest) = data.split_at(data.len().min(2));
    let cuts: Vec<usize> = cuts.iter().map(|c| usize::from(*c) + 1).collect();
    edge_svc::frame::exercise(rest, &cuts, 64);
});
