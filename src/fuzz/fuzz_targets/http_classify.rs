//! A new TCP flow's first bytes through the classifier, growing as they
//! would arrive. Must never panic; at the sniff limit it always decides.
#![no_main]

use gondolin::http::classify::{classify, Kind, SNIFF_LIMIT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(SNIFF_LIMIT)];
    // The flow re-classifies after each read; try a few read boundaries.
    for cut in [1, 3, data.len() / 2, data.len()] {
        let _ = classify(&data[..cut.min(data.len())]);
    }
    if data.len() == SNIFF_LIMIT {
        assert_ne!(classify(data), Kind::Undecided);
    }
});
