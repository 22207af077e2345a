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
    },
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
