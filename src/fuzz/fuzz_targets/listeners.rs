//! `/etc/gondolin/listeners` as the guest may write it, through
//! `parse_listeners`. Must never panic; whatever parses serializes to a
//! canonical file that parses back to the same routes, within the caps.
#![no_main]

use gondolin::ingress::{parse_listeners, serialize_listeners, MAX_ROUTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(routes) = parse_listeners(&text) {
        assert!(routes.len() <= MAX_ROUTES);
        let canonical = serialize_listeners(&routes);
        assert_eq!(parse_listeners(&canonical).ok(), Some(routes));
    }
});
