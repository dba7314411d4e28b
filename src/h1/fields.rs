//! The fields of a response head that decide its framing and its connection's fate, noted in
//! the one pass that builds its map: nothing looks them up by name afterwards.

use http::{HeaderName, header};

use crate::middleware::framing::FramingFields;
use crate::middleware::hop_by_hop::ConnectionTokens;
use crate::upstream::reuse::{KEEP_ALIVE, KeepAlive};

/// `Transfer-Encoding` and `Content-Length`, `Connection`, and `Keep-Alive` of one head.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeadFields {
    pub framing: FramingFields,
    pub connection: ConnectionTokens,
    pub keep_alive: KeepAlive,
}

/// Whether a field goes on into the response's header map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Noted {
    /// Read here and of no use above: `Keep-Alive`, and a `Connection` line that names only
    /// `keep-alive` or `upgrade` (fields the proxy strips anyway). A line naming any other
    /// field stays, so that the proxy strips the fields it names too.
    Consumed,
    Kept,
}

impl HeadFields {
    /// One field of the head, in the order read. Comparing a standard name is one compare.
    #[inline]
    pub(super) fn note(&mut self, name: &HeaderName, value: &[u8]) -> Noted {
        if *name == header::CONTENT_LENGTH {
            self.framing.note_content_length(value);
        } else if *name == header::TRANSFER_ENCODING {
            self.framing.note_transfer_encoding(value);
        } else if *name == header::CONNECTION {
            let mut line = ConnectionTokens::default();
            line.note_value(value);
            self.connection.merge(line);
            if !line.others {
                return Noted::Consumed;
            }
        } else if *name == KEEP_ALIVE {
            self.keep_alive.note(value);
            return Noted::Consumed;
        }
        Noted::Kept
    }
}
