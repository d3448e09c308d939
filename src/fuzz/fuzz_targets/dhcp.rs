//! A DHCP message from the guest through the one-lease server. Must never
//! panic.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dns = [Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(127, 0, 0, 53)];
    if let Some(reply) = gondolin::net::dhcp::handle(data, &dns) {
        assert!(!reply.payload.is_empty());
    }
});
