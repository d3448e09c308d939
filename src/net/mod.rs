//! The guest's network: a userspace TCP/IP stack on QEMU's stream netdev.
//!
//! QEMU connects its `-netdev stream` backend to a unix socket we listen on
//! and exchanges Ethernet frames, each prefixed by a 4-byte big-endian length
//! ([`link`]). [`stack`] runs smoltcp in any-IP mode as the guest's gateway:
//! ARP for the gateway address, DHCP ([`dhcp`]), DNS on UDP port 53
//! ([`dns`]), synthetic ICMP echo for every address, and TCP flows to any
//! destination, each accepted on its first SYN and handed to a
//! [`FlowHandler`] as a byte stream ([`flow`]). Everything else is dropped.
//! Nothing here opens a host socket except trusted/open DNS forwarding; what
//! a TCP flow may reach is the handler's decision (see `crate::http`).

mod device;
pub mod dhcp;
pub mod dial;
pub mod dns;
pub mod flow;
pub mod forward;
pub mod link;
pub mod stack;

use std::net::Ipv4Addr;

pub use flow::{Flow, FlowHandler, FlowStream};
pub use stack::{run, NetStats};

/// The host side of the guest's link.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 1);
pub const GATEWAY_MAC: [u8; 6] = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd];
/// The address the guest is given (DHCP or static).
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 3);
pub const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const PREFIX_LEN: u8 = 24;
pub const BROADCAST: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 255);

/// The link MTU. The guest's init sets eth0 to this: the link is a unix
/// socket, not a wire, so big frames cost the same per frame as small ones
/// and a 64 KiB MSS cuts the per-packet work (guest interrupts, smoltcp
/// polls) about 40-fold. QEMU's stream netdev carries frames up to 68 KiB.
pub const MTU: usize = 65_520;
/// Largest Ethernet frame accepted from the guest (MTU + header + VLAN
/// tag). Bigger frames are dropped.
pub const MAX_FRAME: usize = MTU + 18;

/// Default cap on concurrent TCP flows per VM.
pub const DEFAULT_MAX_FLOWS: usize = 256;

/// The network a VM gets.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub dns: dns::DnsConfig,
    /// New SYNs beyond this many open flows are reset.
    pub max_flows: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            dns: dns::DnsConfig::default(),
            max_flows: DEFAULT_MAX_FLOWS,
        }
    }
}
