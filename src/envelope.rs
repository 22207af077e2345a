//! The envelope of a message: who sent it, to whom, through which path and when.
//!
//! The envelope travels with the raw message from intake (SMTP session or `sendmail`) through
//! the spool to the digest. It is distinct from the message headers: `Bcc` recipients appear
//! only here, and the envelope sender may differ from `From:`.

use std::net::SocketAddr;
use std::time::SystemTime;

/// How a message entered the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Received by the daemon from an SMTP client.
    Smtp {
        /// The client's address.
        peer: SocketAddr,
        /// The name the client gave in HELO/EHLO (may be empty).
        helo: String,
    },
    /// Submitted by a local program through `sendmail` (including `sendmail -bs`).
    Local {
        /// The real uid of the submitting process.
        uid: u32,
        /// Its login name, or `uid<N>` when the uid has no passwd entry.
        user: String,
        /// The sender's full name given with `sendmail -F`, at most [`MAX_FULL_NAME`] bytes
        /// (see [`cap_full_name`]). The caller's word, like the envelope sender: any text,
        /// control characters included, which the digest cleans before showing it.
        full_name: Option<String>,
    },
}

impl Origin {
    /// The full name of a local submission (`sendmail -F`), if one was given.
    pub fn full_name(&self) -> Option<&str> {
        match self {
            Origin::Local { full_name, .. } => full_name.as_deref(),
            Origin::Smtp { .. } => None,
        }
    }
}

/// The longest full name kept, in bytes. The digest shows far less of it; the bound keeps
/// any `-F` value small enough for the spool header, so that a message the bridge would
/// have taken directly can always be spooled instead.
pub const MAX_FULL_NAME: usize = 1024;

/// `name` cut to at most [`MAX_FULL_NAME`] bytes, never inside a character.
pub fn cap_full_name(name: &str) -> String {
    let mut end = name.len().min(MAX_FULL_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// The envelope of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The envelope sender (reverse path). The empty string is the null sender `<>`.
    pub sender: String,
    /// The envelope recipients (forward paths), in the order given. May be empty for a local
    /// submission that named none (the digest then says "no recipients").
    pub recipients: Vec<String>,
    /// How the message arrived.
    pub origin: Origin,
    /// When it was accepted.
    pub arrival: SystemTime,
}
