//! longhaul's own upstream HTTP/1 client codec (RFC 9112): writes a request, reads a response
//! head and body on any byte stream, and says whether the connection may carry another request.
//!
//! Tower-free and pool-free: the lease that owns a pooled socket drives one exchange with
//! [`write_request`] then [`read_response`], streams the [`ResponseBody`] and calls
//! [`ResponseBody::finish`] to get the socket back with its [`Reuse`] verdict. Heads are parsed
//! by `httparse` (hyper's parser); tests/h1_differential.rs and fuzz/fuzz_targets/h1_response.rs
//! compare every outcome with hyper's client.
//!
//! Memory: nothing is kept between exchanges. [`read_response`] allocates a 4 KiB read buffer
//! (`HEAD_BUF_START`), doubling only while a head is incomplete, up to `Limits::max_head_bytes`
//! (64 KiB by default); body reads top it up by 16 KiB (`BODY_READ`) at a time. The buffer and
//! the header array are dropped with the `ResponseBody`, so an idle connection costs its socket.

mod body;
mod chunked;
mod error;
mod fields;
mod framing;
mod head;
mod request;

use crate::upstream::reuse;

pub use body::{ResponseBody, Reuse};
pub use error::{Error, ErrorKind};
pub use fields::HeadFields;
pub use framing::{Framing, response_framing};
pub use head::{Limits, read_response};
pub use request::{AddedField, RequestHead, write_request};

#[cfg(test)]
mod tests;
