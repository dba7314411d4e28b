//! Protocol detection on a redirected connection: does it start like an HTTP/1.x request?
//! Only the method token is sniffed (with MSG_PEEK); hyper parses the request itself.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Request methods longhaul pools; anything else is spliced as raw TCP.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
    b"CONNECT ",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http,
    /// Not HTTP, or nothing sent within the timeout (a server-first protocol).
    Other,
    /// The client closed before sending anything.
    Closed,
}

enum Sniff {
    Yes,
    No,
    NeedMore,
}

fn sniff(bytes: &[u8]) -> Sniff {
    if METHODS.iter().any(|m| bytes.starts_with(m)) {
        Sniff::Yes
    } else if METHODS.iter().any(|m| m.starts_with(bytes)) {
        Sniff::NeedMore
    } else {
        Sniff::No
    }
}

/// Peeks at the first bytes for at most `timeout`.
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Detected {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 8];
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Detected::Other,
            Ok(Err(_)) | Ok(Ok(0)) => return Detected::Closed,
            Ok(Ok(n)) => match sniff(&buf[..n]) {
                Sniff::Yes => return Detected::Http,
                Sniff::No => return Detected::Other,
                // A method split across packets: wait briefly for the rest.
                Sniff::NeedMore => {
                    if Instant::now() >= deadline {
                        return Detected::Other;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_http() {
        assert!(matches!(sniff(b"GET / HT"), Sniff::Yes));
        assert!(matches!(sniff(b"OPTIONS "), Sniff::Yes));
    }

    #[test]
    fn a_method_prefix_needs_more_bytes() {
        assert!(matches!(sniff(b"GE"), Sniff::NeedMore));
        assert!(matches!(sniff(b"POS"), Sniff::NeedMore));
    }

    #[test]
    fn other_protocols_are_not_http() {
        assert!(matches!(sniff(b"\x16\x03\x01\x02\x00"), Sniff::No));
        assert!(matches!(sniff(b"SSH-2.0-"), Sniff::No));
        assert!(matches!(sniff(b"get / "), Sniff::No));
    }
}
