//! Where a redirected connection was going: SO_ORIGINAL_DST after an iptables/nftables REDIRECT
//! (IPv4 or IPv6, chosen by the peer's family), or the local address itself under TPROXY.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The original destination of `stream`, or `None` when the connection was not redirected
/// (it was addressed to the listener itself). Under TPROXY nothing was rewritten: the accepted
/// socket's local address is the destination, whatever conntrack knows about it.
pub fn original_destination(
    stream: &TcpStream,
    peer: SocketAddr,
    tproxy: bool,
) -> io::Result<Option<SocketAddr>> {
    let local = stream.local_addr()?;
    if tproxy {
        return Ok(Some(canonical(local)));
    }
    let sock = SockRef::from(stream);
    // A v4 client on a dual-stack socket shows as v4-mapped; conntrack knows it as IPv4.
    let peer_is_v4 = match peer {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    let redirected = if peer_is_v4 {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    match redirected {
        Ok(addr) => {
            let addr = addr
                .as_socket()
                .ok_or_else(|| io::Error::other("original destination is not an IP address"))?;
            Ok((addr != local).then_some(canonical(addr)))
        }
        // No conntrack entry at all: nothing was NATed, so nothing was redirected.
        Err(e) if e.raw_os_error() == Some(ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Linux's errno when a socket has no conntrack NAT entry.
const ENOENT: i32 = 2;

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
