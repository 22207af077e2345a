//! The digest: raw message bytes + envelope -> the short plain text the owner reads in chat.
//!
//! INTERFACE SKELETON — owned by the digest helper. `Digest::build`, `Digest::render`,
//! `DigestOptions` and `MAX_PARSE_BYTES` are used by `deliver` and `sendmail`; keep them.

use crate::envelope::Envelope;

/// At most this many bytes of a message are parsed for its digest, whatever its size, so
/// that memory stays bounded; the digest says when the message went on beyond it.
pub const MAX_PARSE_BYTES: usize = 4 << 20;

/// How a digest is built.
#[derive(Debug, Clone)]
pub struct DigestOptions {
    /// Body characters shown before the "N more characters not shown" line.
    pub max_body_chars: usize,
    /// Our host name, for synthesized `From:` (`user@hostname`).
    pub hostname: String,
}

/// What the owner reads about one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Digest {
    /// The decoded Subject (empty when there is none).
    pub subject: String,
    /// The decoded From, or one synthesized from the envelope.
    pub from: String,
    /// Whether `from` was synthesized because the message had none.
    pub from_synthesized: bool,
    /// The decoded To addresses (never Bcc).
    pub to: Vec<String>,
    /// The decoded Cc addresses.
    pub cc: Vec<String>,
    /// The Date header, or the arrival time.
    pub date: String,
    /// Whether `date` was synthesized.
    pub date_synthesized: bool,
    /// The decoded, readable body text, already capped.
    pub body: String,
    /// How many body characters were cut by the cap.
    pub body_chars_cut: usize,
    /// Attachments: name, MIME type and size in bytes.
    pub attachments: Vec<Attachment>,
}

/// One attachment, listed and never dumped.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// File name, or a placeholder such as `(unnamed)`.
    pub name: String,
    /// MIME type such as `application/pdf`.
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: u64,
}

impl Digest {
    /// Builds the digest of `raw` (at most [`MAX_PARSE_BYTES`] of the message; `total_size`
    /// is the whole message's size). Never fails: empty, malformed, binary or non-UTF-8 input
    /// still yields a digest.
    pub fn build(raw: &[u8], total_size: u64, envelope: &Envelope, opts: &DigestOptions) -> Digest {
        let _ = (raw, total_size, envelope, opts);
        todo!()
    }

    /// The text sent to the bridge as `reply`.
    pub fn render(&self) -> String {
        todo!()
    }
}
