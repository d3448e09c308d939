//! A one-lease DHCP server: whoever asks gets the guest address.

use std::net::Ipv4Addr;

use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress};

use super::{BROADCAST, GATEWAY_IP, GUEST_IP};

pub const LEASE_SECS: u32 = 86_400;

/// A reply to send back: the DHCP payload and whether it must go to the
/// broadcast MAC (client asked for it) rather than the client's own.
#[derive(Debug)]
pub struct DhcpReply {
    pub payload: Vec<u8>,
    pub client_mac: [u8; 6],
    pub broadcast: bool,
}

/// Answer DISCOVER with OFFER and REQUEST with ACK; ignore everything else.
pub fn handle(payload: &[u8], dns: &[Ipv4Addr]) -> Option<DhcpReply> {
    let packet = DhcpPacket::new_checked(payload).ok()?;
    let req = DhcpRepr::parse(&packet).ok()?;
    let message_type = match req.message_type {
        DhcpMessageType::Discover => DhcpMessageType::Offer,
        DhcpMessageType::Request => DhcpMessageType::Ack,
        _ => return None,
    };
    let mut servers = heapless::Vec::new();
    for ip in dns.iter().filter(|ip| !ip.is_loopback()) {
        if servers.push(*ip).is_err() {
            break;
        }
    }
    let bcast = BROADCAST.octets();
    let extra = [DhcpOption {
        kind: 28,
        data: &bcast,
    }];
    let reply = DhcpRepr {
        message_type,
        transaction_id: req.transaction_id,
        secs: 0,
        client_hardware_address: req.client_hardware_address,
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: GUEST_IP,
        server_ip: GATEWAY_IP,
        router: Some(GATEWAY_IP),
        subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: req.broadcast,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(GATEWAY_IP),
        parameter_request_list: None,
        dns_servers: (!servers.is_empty()).then_some(servers),
        max_size: None,
        lease_duration: Some(LEASE_SECS),
        renew_duration: None,
        rebind_duration: None,
        additional_options: &extra,
    };
    let mut buf = vec![0u8; reply.buffer_len()];
    reply.emit(&mut DhcpPacket::new_unchecked(&mut buf)).ok()?;
    let EthernetAddress(client_mac) = req.client_hardware_address;
    Some(DhcpReply {
        payload: buf,
        client_mac,
        broadcast: req.broadcast,
    })
}

#[cfg(test)]
pub(crate) fn request(kind: DhcpMessageType, mac: [u8; 6]) -> Vec<u8> {
    let repr = DhcpRepr {
        message_type: kind,
        transaction_id: 0xfeed,
        secs: 0,
        client_hardware_address: EthernetAddress(mac),
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: None,
        server_identifier: None,
        parameter_request_list: Some(&[1, 3, 6]),
        dns_servers: None,
        max_size: None,
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut buf)).unwrap();
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(reply: &DhcpReply) -> (DhcpMessageType, Ipv4Addr, Option<Ipv4Addr>, Vec<Ipv4Addr>) {
        let p = DhcpPacket::new_checked(&reply.payload[..]).unwrap();
        let r = DhcpRepr::parse(&p).unwrap();
        let dns = r.dns_servers.map(|v| v.to_vec()).unwrap_or_default();
        (r.message_type, r.your_ip, r.router, dns)
    }

    #[test]
    fn discover_offer_request_ack() {
        let mac = [2, 0, 0, 0, 0, 1];
        let offer = handle(&request(DhcpMessageType::Discover, mac), &[GATEWAY_IP]).unwrap();
        assert_eq!(offer.client_mac, mac);
        assert_eq!(
            parse(&offer),
            (
                DhcpMessageType::Offer,
                GUEST_IP,
                Some(GATEWAY_IP),
                vec![GATEWAY_IP]
            )
        );
        let ack = handle(&request(DhcpMessageType::Request, mac), &[GATEWAY_IP]).unwrap();
        assert_eq!(parse(&ack).0, DhcpMessageType::Ack);
        assert!(handle(&request(DhcpMessageType::Release, mac), &[]).is_none());
        assert!(handle(&[1, 2, 3], &[]).is_none());
    }

    #[test]
    fn never_advertises_loopback_dns() {
        let offer = handle(
            &request(DhcpMessageType::Discover, [2, 0, 0, 0, 0, 1]),
            &[Ipv4Addr::new(127, 0, 0, 53), Ipv4Addr::new(9, 9, 9, 9)],
        )
        .unwrap();
        assert_eq!(parse(&offer).3, vec![Ipv4Addr::new(9, 9, 9, 9)]);
    }
}
