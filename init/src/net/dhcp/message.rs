//! DHCPv4 messages: building the client's DISCOVER, REQUEST (selecting, renewing, rebinding) and
//! RELEASE, and reading the server's OFFER, ACK and NAK into typed values (RFC 2131, 2132).
//!
//! Owns: which fields and options each client message carries (broadcast flag while the client
//! has no address, `ciaddr` while it has one, client identifier = htype 1 + MAC, the parameter
//! request list) and which replies belong to us (BOOTREPLY, our xid, our chaddr).
//! Must not: do I/O or keep time; encoding and decoding go through `dhcproto`.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};

use crate::net::plan::Mac;

/// A message that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// dhcproto could not encode a message we built.
    #[error("encode DHCP{kind}: {reason}")]
    Encode {
        /// DISCOVER, REQUEST, RELEASE.
        kind: &'static str,
        /// dhcproto's reason.
        reason: String,
    },
}

/// What a server offered or acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// `yiaddr`.
    pub address: Ipv4Addr,
    /// From option 1. Without a mask the lease is a /32 (a classful guess is wrong on today's
    /// networks) and the router is reached through a host route.
    pub prefix_len: u8,
    /// Option 54, else the packet's `siaddr`.
    pub server: Ipv4Addr,
    /// Option 3.
    pub routers: Vec<Ipv4Addr>,
    /// Option 6.
    pub dns: Vec<Ipv4Addr>,
    /// Option 15.
    pub domain: Option<String>,
    /// Option 119 (names without the trailing dot).
    pub search: Vec<String>,
    /// Option 12.
    pub hostname: Option<String>,
    /// Option 26.
    pub mtu: Option<u16>,
    /// Option 51 in seconds; `u32::MAX` is infinite.
    pub lease_s: u32,
    /// Option 58 (T1), when sent.
    pub renew_s: Option<u32>,
    /// Option 59 (T2), when sent.
    pub rebind_s: Option<u32>,
}

/// A reply addressed to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// DHCPOFFER.
    Offer(LeaseInfo),
    /// DHCPACK.
    Ack(LeaseInfo),
    /// DHCPNAK from `server`.
    Nak {
        /// Option 54, else unspecified.
        server: Ipv4Addr,
    },
}

/// The options the client asks for.
const WANTED: [OptionCode; 10] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::Hostname,
    OptionCode::DomainName,
    OptionCode::InterfaceMtu,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
    OptionCode::DomainSearch,
];

/// Who the client is: what every message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The link's hardware address (`chaddr`, client identifier).
    pub mac: Mac,
    /// Host name to announce (option 12), when the config sets one.
    pub hostname: Option<String>,
}

impl Client {
    fn base(&self, xid: u32, kind: MessageType, ciaddr: Ipv4Addr, broadcast: bool) -> Message {
        let mut m = Message::new_with_id(
            xid,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac.0,
        );
        m.set_opcode(Opcode::BootRequest);
        if broadcast {
            // Without an address the reply must be broadcast to reach our UDP socket.
            m.set_flags(Flags::default().set_broadcast());
        }
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        let mut id = vec![1u8];
        id.extend_from_slice(&self.mac.0);
        opts.insert(DhcpOption::ClientIdentifier(id));
        if kind != MessageType::Release {
            opts.insert(DhcpOption::ParameterRequestList(WANTED.to_vec()));
            opts.insert(DhcpOption::MaxMessageSize(1500));
            if let Some(h) = &self.hostname {
                opts.insert(DhcpOption::Hostname(h.clone()));
            }
        }
        m
    }

    fn encode(kind: &'static str, m: &Message) -> Result<Vec<u8>, MessageError> {
        m.to_vec().map_err(|e| MessageError::Encode {
            kind,
            reason: e.to_string(),
        })
    }

    /// DHCPDISCOVER, broadcast.
    pub fn discover(&self, xid: u32) -> Result<Vec<u8>, MessageError> {
        let m = self.base(xid, MessageType::Discover, Ipv4Addr::UNSPECIFIED, true);
        Self::encode("DISCOVER", &m)
    }

    /// DHCPREQUEST in SELECTING state: asks `server` for `offered`, broadcast.
    pub fn request_selecting(
        &self,
        xid: u32,
        offered: Ipv4Addr,
        server: Ipv4Addr,
    ) -> Result<Vec<u8>, MessageError> {
        let mut m = self.base(xid, MessageType::Request, Ipv4Addr::UNSPECIFIED, true);
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(offered));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        Self::encode("REQUEST", &m)
    }

    /// DHCPREQUEST in RENEWING state: `ciaddr` set, unicast to the server, no server id.
    pub fn request_renewing(&self, xid: u32, ciaddr: Ipv4Addr) -> Result<Vec<u8>, MessageError> {
        let m = self.base(xid, MessageType::Request, ciaddr, false);
        Self::encode("REQUEST", &m)
    }

    /// DHCPREQUEST in REBINDING state: `ciaddr` set, broadcast to any server.
    pub fn request_rebinding(&self, xid: u32, ciaddr: Ipv4Addr) -> Result<Vec<u8>, MessageError> {
        let m = self.base(xid, MessageType::Request, ciaddr, false);
        Self::encode("REQUEST", &m)
    }

    /// DHCPRELEASE of `ciaddr`, unicast to `server`.
    pub fn release(
        &self,
        xid: u32,
        ciaddr: Ipv4Addr,
        server: Ipv4Addr,
    ) -> Result<Vec<u8>, MessageError> {
        let mut m = self.base(xid, MessageType::Release, ciaddr, false);
        m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        Self::encode("RELEASE", &m)
    }

    /// The reply in `bytes`, if it is a well-formed OFFER, ACK or NAK for `xid` and our MAC.
    /// Anything else (other clients' traffic, garbage) is `None`.
    pub fn parse(&self, bytes: &[u8], xid: u32) -> Option<Reply> {
        let m = Message::from_bytes(bytes).ok()?;
        if m.opcode() != Opcode::BootReply || m.xid() != xid {
            return None;
        }
        if m.chaddr().get(..6) != Some(&self.mac.0[..]) {
            return None;
        }
        let opts = m.opts();
        let server = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => m.siaddr(),
        };
        match opts.msg_type()? {
            MessageType::Nak => Some(Reply::Nak { server }),
            MessageType::Offer => lease_info(&m, server).map(Reply::Offer),
            MessageType::Ack => lease_info(&m, server).map(Reply::Ack),
            _ => None,
        }
    }
}

fn lease_info(m: &Message, server: Ipv4Addr) -> Option<LeaseInfo> {
    let address = m.yiaddr();
    if address.is_unspecified() || address.is_broadcast() {
        return None;
    }
    let mut info = LeaseInfo {
        address,
        prefix_len: 32,
        server,
        routers: Vec::new(),
        dns: Vec::new(),
        domain: None,
        search: Vec::new(),
        hostname: None,
        mtu: None,
        lease_s: 0,
        renew_s: None,
        rebind_s: None,
    };
    let mut has_lease_time = false;
    for (_, opt) in m.opts().iter() {
        match opt {
            DhcpOption::SubnetMask(mask) => {
                let bits = u32::from(*mask);
                // A mask must be contiguous ones; anything else is ignored.
                if bits.leading_ones() + bits.trailing_zeros() == 32 {
                    info.prefix_len = u8::try_from(bits.leading_ones()).unwrap_or(32);
                }
            }
            DhcpOption::Router(r) => info.routers.clone_from(r),
            DhcpOption::DomainNameServer(d) => info.dns.clone_from(d),
            DhcpOption::DomainName(d) => info.domain = clean_name(d),
            DhcpOption::Hostname(h) => info.hostname = clean_name(h),
            DhcpOption::InterfaceMtu(mtu) => info.mtu = Some(*mtu),
            DhcpOption::AddressLeaseTime(t) => {
                info.lease_s = *t;
                has_lease_time = true;
            }
            DhcpOption::Renewal(t) => info.renew_s = Some(*t),
            DhcpOption::Rebinding(t) => info.rebind_s = Some(*t),
            DhcpOption::DomainSearch(names) => {
                info.search = names
                    .iter()
                    .filter_map(|n| clean_name(&n.to_string()))
                    .collect();
            }
            _ => {}
        }
    }
    // An ACK must carry a lease time (RFC 2131 table 3); an offer without one is unusable.
    has_lease_time.then_some(info)
}

/// A DNS name as servers send it: trailing dot and NULs dropped, empty is `None`.
fn clean_name(s: &str) -> Option<String> {
    let s = s.trim_end_matches('\0').trim().trim_end_matches('.');
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dhcproto::Name;

    pub(crate) fn client() -> Client {
        Client {
            mac: Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            hostname: None,
        }
    }

    /// A server reply as dnsmasq would send it.
    pub(crate) fn server_reply(
        kind: MessageType,
        xid: u32,
        mac: Mac,
        yiaddr: Ipv4Addr,
        extra: &[DhcpOption],
    ) -> Vec<u8> {
        let mut m = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::UNSPECIFIED,
            &mac.0,
        );
        m.set_opcode(Opcode::BootReply);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)));
        for opt in extra {
            o.insert(opt.clone());
        }
        m.to_vec().unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Message {
        match Message::from_bytes(bytes) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn test_discover_is_broadcast_with_client_id_and_request_list() {
        let bytes = client().discover(0x1234_5678).unwrap_or_default();
        let m = decode(&bytes);
        assert_eq!(m.opcode(), Opcode::BootRequest);
        assert_eq!(m.xid(), 0x1234_5678);
        assert!(m.flags().broadcast());
        assert_eq!(m.chaddr(), &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(
            m.opts().get(OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(vec![
                1, 0x52, 0x54, 0, 0x12, 0x34, 0x56
            ]))
        );
        match m.opts().get(OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(list)) => {
                assert!(list.contains(&OptionCode::Renewal));
                assert!(list.contains(&OptionCode::DomainNameServer));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.opts().get(OptionCode::Hostname), None);
    }

    #[test]
    fn test_request_selecting_names_the_offer_and_server() {
        let c = Client {
            hostname: Some("node-1".into()),
            ..client()
        };
        let ip = Ipv4Addr::new(10, 0, 2, 15);
        let server = Ipv4Addr::new(10, 0, 2, 2);
        let m = decode(&c.request_selecting(7, ip, server).unwrap_or_default());
        assert!(m.flags().broadcast());
        assert_eq!(m.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(
            m.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ip))
        );
        assert_eq!(
            m.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(server))
        );
        assert_eq!(
            m.opts().get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("node-1".into()))
        );
    }

    #[test]
    fn test_renewing_sets_ciaddr_without_server_id_or_broadcast() {
        let ip = Ipv4Addr::new(10, 0, 2, 15);
        let m = decode(&client().request_renewing(9, ip).unwrap_or_default());
        assert_eq!(m.ciaddr(), ip);
        assert!(!m.flags().broadcast());
        assert_eq!(m.opts().get(OptionCode::ServerIdentifier), None);
        assert_eq!(m.opts().get(OptionCode::RequestedIpAddress), None);
    }

    #[test]
    fn test_release_carries_address_and_server() {
        let ip = Ipv4Addr::new(10, 0, 2, 15);
        let server = Ipv4Addr::new(10, 0, 2, 2);
        let m = decode(&client().release(3, ip, server).unwrap_or_default());
        assert_eq!(m.opts().msg_type(), Some(MessageType::Release));
        assert_eq!(m.ciaddr(), ip);
        assert_eq!(
            m.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(server))
        );
        assert_eq!(m.opts().get(OptionCode::ParameterRequestList), None);
    }

    #[test]
    fn test_ack_parses_into_lease_info() {
        let c = client();
        let search = vec![
            Name::from_ascii("lab.example.").unwrap_or_default(),
            Name::from_ascii("example.").unwrap_or_default(),
        ];
        let bytes = server_reply(
            MessageType::Ack,
            42,
            c.mac,
            Ipv4Addr::new(10, 0, 2, 15),
            &[
                DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
                DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]),
                DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 2, 3)]),
                DhcpOption::DomainName("example.".into()),
                DhcpOption::Hostname("guest".into()),
                DhcpOption::AddressLeaseTime(120),
                DhcpOption::Renewal(10),
                DhcpOption::DomainSearch(search),
            ],
        );
        let expected = LeaseInfo {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            server: Ipv4Addr::new(10, 0, 2, 2),
            routers: vec![Ipv4Addr::new(10, 0, 2, 2)],
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            domain: Some("example".into()),
            search: vec!["lab.example".into(), "example".into()],
            hostname: Some("guest".into()),
            mtu: None,
            lease_s: 120,
            renew_s: Some(10),
            rebind_s: None,
        };
        assert_eq!(c.parse(&bytes, 42), Some(Reply::Ack(expected)));
    }

    #[test]
    fn test_replies_for_others_are_ignored() {
        let c = client();
        let ip = Ipv4Addr::new(10, 0, 2, 15);
        let lease = [DhcpOption::AddressLeaseTime(60)];
        let ok = server_reply(MessageType::Offer, 5, c.mac, ip, &lease);
        assert!(matches!(c.parse(&ok, 5), Some(Reply::Offer(_))));
        // Wrong xid, wrong MAC, our own broadcast request echoed back, garbage, no lease time.
        assert_eq!(c.parse(&ok, 6), None);
        let other = server_reply(MessageType::Offer, 5, Mac([2, 0, 0, 0, 0, 1]), ip, &lease);
        assert_eq!(c.parse(&other, 5), None);
        assert_eq!(c.parse(&c.discover(5).unwrap_or_default(), 5), None);
        assert_eq!(c.parse(&[1, 2, 3], 5), None);
        let no_time = server_reply(MessageType::Ack, 5, c.mac, ip, &[]);
        assert_eq!(c.parse(&no_time, 5), None);
    }

    #[test]
    fn test_nak_names_the_server() {
        let c = client();
        let nak = server_reply(MessageType::Nak, 8, c.mac, Ipv4Addr::UNSPECIFIED, &[]);
        assert_eq!(
            c.parse(&nak, 8),
            Some(Reply::Nak {
                server: Ipv4Addr::new(10, 0, 2, 2)
            })
        );
    }
}
