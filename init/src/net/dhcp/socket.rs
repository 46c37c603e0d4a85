//! The DHCP client's UDP transport: one socket per link, bound to `0.0.0.0:68` with
//! `SO_BINDTODEVICE` and `SO_BROADCAST`.
//!
//! Owns: the socket options that let a plain UDP socket do DHCP without raw sockets. Requests
//! leave from `0.0.0.0` to `255.255.255.255:67` through the bound device (the kernel routes a
//! limited broadcast out of `SO_BINDTODEVICE`'s device even with no address or route); the
//! client sets the BOOTP broadcast flag so the server broadcasts its replies, which reach the
//! socket before the link has an address. Renewals go unicast to the server from the leased
//! address.
//! Must not: parse DHCP or keep state.
//!
//! Limitations: with reverse-path filtering on (`net.ipv4.conf.{all,IFACE}.rp_filter` ≠ 0), the
//! kernel drops a broadcast reply from a server it has no route back to, which is always the
//! case before the first lease; ros's defaults leave rp_filter at 0, and the client warns when
//! it is on.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use futures::future::BoxFuture;
use socket2::{Domain, Protocol, Socket, Type};

use super::{Destination, Transport};

/// DHCP server port.
pub const SERVER_PORT: u16 = 67;
/// DHCP client port.
pub const CLIENT_PORT: u16 = 68;

/// A UDP socket bound to one device.
pub struct UdpTransport {
    socket: tokio::net::UdpSocket,
    ifname: String,
}

impl UdpTransport {
    /// Opens the client socket on `ifname`. Must be called inside a tokio runtime, in the
    /// network namespace of the link.
    pub fn open(ifname: &str) -> io::Result<UdpTransport> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_broadcast(true)?;
        s.bind_device(Some(ifname.as_bytes()))?;
        s.set_nonblocking(true)?;
        s.set_cloexec(true)?;
        let local = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT));
        s.bind(&local.into())?;
        let socket = tokio::net::UdpSocket::from_std(s.into())?;
        Ok(UdpTransport {
            socket,
            ifname: ifname.to_string(),
        })
    }

    /// Whether reverse-path filtering would drop the first broadcast reply on `ifname`.
    pub fn rp_filter_on(ifname: &str) -> bool {
        ["all", ifname].iter().any(|dev| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter"))
                .map(|v| v.trim() != "0")
                .unwrap_or(false)
        })
    }
}

impl Transport for UdpTransport {
    fn send<'a>(&'a mut self, bytes: &'a [u8], to: Destination) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let ip = match to {
                Destination::Broadcast => Ipv4Addr::BROADCAST,
                Destination::Server(ip) => ip,
            };
            let n = self
                .socket
                .send_to(bytes, SocketAddrV4::new(ip, SERVER_PORT))
                .await?;
            if n == bytes.len() {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!(
                        "short send on {}: {n} of {} bytes",
                        self.ifname,
                        bytes.len()
                    ),
                ))
            }
        })
    }

    fn recv(&mut self) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(async move {
            let mut buf = vec![0u8; 1500];
            let (n, _) = self.socket.recv_from(&mut buf).await?;
            buf.truncate(n);
            Ok(buf)
        })
    }
}
