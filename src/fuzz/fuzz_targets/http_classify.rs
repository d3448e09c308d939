//! A new TCP flow's first bytes through the classifier, growing as they
//! would arrive. Must never panic; at the sniff limit it always decides.
#![no_main]

use gondolin::http::classify::{classify_on, Kind, SNIFF_LIMIT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(SNIFF_LIMIT)];
    // The flow re-classifies after each read; try a few read boundaries.
    // On an SSH egress port too, where `SSH-` decides early.
    for ssh_port in [false, true] {
        for cut in [1, 3, data.len() / 2, data.len()] {
            let _ = classify_on(&data[..cut.min(data.len())], ssh_port);
        }
        if data.len() == SNIFF_LIMIT {
            assert_ne!(classify_on(data, ssh_port), Kind::Undecided);
        }
    }
});
