//! A DNS query from the guest (UDP payload to the gateway or elsewhere)
//! through `DnsServer::handle` in every mode. Must never panic; a reply
//! is never longer than a UDP DNS message may be.
#![no_main]

use std::net::Ipv4Addr;

use gondolin::net::dns::{DnsAction, DnsConfig, DnsMode, DnsServer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let gateway = gondolin::net::GATEWAY_IP;
    let other = Ipv4Addr::new(8, 8, 8, 8);
    for (mode, per_host) in [
        (DnsMode::Synthetic, false),
        (DnsMode::Synthetic, true),
        (DnsMode::Trusted, false),
        (DnsMode::Open, false),
    ] {
        let dns = DnsServer::new(DnsConfig {
            mode,
            per_host,
            servers: vec![Ipv4Addr::new(1, 1, 1, 1)],
            ..DnsConfig::default()
        });
        for dst in [gateway, other] {
            if let DnsAction::Reply(r) = dns.handle(data, dst) {
                // Header + the echoed question (≤ 512 in all) + one answer.
                assert!(r.len() <= 512 + 28, "reply of {} bytes", r.len());
            }
        }
    }
});
