//! The tower layers every proxied request passes through, one small module per concern.
//! Order and the reason for it live in `server::stack`.

pub mod access_log;
pub mod forwarded;
pub mod framing;
pub mod guard;
pub mod head_limits;
pub mod hop_by_hop;
pub mod request_id;
pub mod shed;
pub mod trailers;
pub mod upstreamed;
