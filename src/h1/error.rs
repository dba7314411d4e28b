//! The one error type of an HTTP/1 exchange, with the two facts a retry decision needs:
//! whether any request byte was written and whether any response byte was read.

use std::io;

use crate::error::BoxError;

/// What went wrong in an exchange, and how far it got.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct Error {
    kind: ErrorKind,
    unsent: bool,
    response_started: bool,
}

impl Error {
    /// A failure while writing the request; `unsent` if not one byte of it reached the stream.
    pub(crate) fn writing(kind: ErrorKind, unsent: bool) -> Error {
        Error {
            kind,
            unsent,
            response_started: false,
        }
    }

    /// A failure while reading the response; `response_started` once any byte of it was read.
    pub(crate) fn reading(kind: ErrorKind, response_started: bool) -> Error {
        Error {
            kind,
            unsent: false,
            response_started,
        }
    }

    /// An exchange given up by its caller before any response byte.
    pub fn abandoned(kind: ErrorKind) -> Error {
        Error::reading(kind, false)
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// No byte of the request was written: the request may go to another connection as it is.
    pub fn is_unsent(&self) -> bool {
        self.unsent
    }

    /// The failure came before any byte of the response (the stale-connection case).
    pub fn is_before_response(&self) -> bool {
        !self.response_started
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("an HTTP/1.0 request body needs a known length (buffer it first)")]
    UnframeableBody,
    #[error("the request body ended after {sent} of its {declared} declared bytes, or overran it")]
    BodyLengthMismatch { declared: u64, sent: u64 },
    #[error("the request body failed: {0}")]
    RequestBody(BoxError),
    #[error("the connection closed before a response")]
    ClosedBeforeResponse,
    /// The adaptive pool gave up on a new connection the server was not picking up.
    #[error("the server did not pick up the new connection while it answered others")]
    NotPickedUp,
    #[error("the connection closed in the middle of the response head")]
    IncompleteHead,
    #[error("the response head is larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("malformed response head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("response status {0} is out of range")]
    BadStatus(u16),
    #[error("response header value is not valid: {0}")]
    BadHeader(&'static str),
    #[error("ambiguous response framing: {0}")]
    AmbiguousFraming(&'static str),
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
    #[error("invalid or differing Content-Length")]
    BadContentLength,
    #[error("malformed chunked body: {0}")]
    Chunk(&'static str),
    #[error("malformed trailer section: {0}")]
    Trailers(&'static str),
    #[error("the connection closed before the end of the response body")]
    IncompleteBody,
}
