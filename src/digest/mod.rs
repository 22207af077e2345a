//! The digest: raw message bytes + envelope -> the short plain text the owner reads in chat.
//!
//! A digest is what a person needs on a phone: who sent the message, to whom, what about and
//! when (decoded, whatever the charset or encoding), how it reached this box, the readable
//! text of the body (HTML turned into plain text), and a list of attachments, never their
//! content. It is bounded in size whatever the message, and building it never fails: empty,
//! truncated, binary or hostile input still yields a digest. It knows nothing of transport,
//! so the daemon, the `sendmail` shim and `mailq` share it.
//!
//! Submodules, one job each: [`html`] converts HTML to text (with `entities`, the table of
//! HTML's named character references), [`text`] cleans and bounds
//! text, `headers` formats the header and envelope lines, `parts` picks the body and
//! lists attachments, `guard` keeps nested messages from reaching the parser (whose
//! recursion on them can overflow the stack).

mod entities;
mod guard;
mod headers;
pub mod html;
mod parts;
pub mod text;

use std::panic::{catch_unwind, AssertUnwindSafe};

use mail_parser::{HeaderName, Message, MessageParser};

use crate::envelope::Envelope;
use text::{cap_body, human_size, one_line, tidy};

/// At most this many bytes of a message are parsed for its digest, whatever its size, so
/// that memory stays bounded; the digest says when the message went on beyond it.
pub const MAX_PARSE_BYTES: usize = 4 << 20;

/// To and Cc addresses shown each; the rest are counted ("and N more").
pub const MAX_ADDRESSES_SHOWN: usize = 10;

/// Attachments listed; the rest are counted ("and N more").
pub const MAX_ATTACHMENTS_SHOWN: usize = 20;

/// Envelope recipients shown; the rest are counted.
pub const MAX_ENVELOPE_RECIPIENTS_SHOWN: usize = 10;

/// How a digest is built.
#[derive(Debug, Clone)]
pub struct DigestOptions {
    /// Body characters shown; a longer body shows its start and its end around an "N more
    /// characters not shown" line.
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
    /// Where a synthesized `from` came from (`not in message; envelope sender`); empty when
    /// the message had a From.
    pub from_note: String,
    /// The decoded To addresses (never Bcc), at most [`MAX_ADDRESSES_SHOWN`].
    pub to: Vec<String>,
    /// How many more To addresses the message had.
    pub to_more: usize,
    /// The decoded Cc addresses, at most [`MAX_ADDRESSES_SHOWN`].
    pub cc: Vec<String>,
    /// How many more Cc addresses the message had.
    pub cc_more: usize,
    /// The Date header, or the arrival time.
    pub date: String,
    /// Whether `date` was synthesized.
    pub date_synthesized: bool,
    /// How the message came: `via sendmail, uid 0 (root)`, `via SMTP from 127.0.0.1 (helo)`.
    pub via: String,
    /// The envelope sender, when it says something the From line does not (`<>` for the
    /// null sender).
    pub envelope_sender: Option<String>,
    /// Envelope recipients the To and Cc headers do not name (Bcc, aliases, or all of them
    /// when the message names none), at most [`MAX_ENVELOPE_RECIPIENTS_SHOWN`].
    pub envelope_recipients: Vec<String>,
    /// How many more such envelope recipients there were.
    pub envelope_recipients_more: usize,
    /// Whether the envelope had no recipients at all.
    pub no_recipients: bool,
    /// The decoded, readable body text, already capped: all of it, or its start when it was
    /// longer than `max_body_chars` (see [`text::cap_body`]).
    pub body: String,
    /// The end of a body longer than `max_body_chars`, shown after the "not shown" line
    /// (where a script's output says how it ended); empty otherwise.
    pub body_tail: String,
    /// How many body characters were left out between `body` and `body_tail`.
    pub body_chars_cut: usize,
    /// Attachments: name, MIME type and size in bytes, at most [`MAX_ATTACHMENTS_SHOWN`].
    pub attachments: Vec<Attachment>,
    /// How many more attachments the message had.
    pub attachments_more: usize,
    /// How many bytes of the message were parsed.
    pub bytes_parsed: u64,
    /// The whole message's size in bytes (more than `bytes_parsed` when it was too big to
    /// parse whole).
    pub total_size: u64,
}

/// One attachment, listed and never dumped.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// File name, or a placeholder such as `(unnamed)`.
    pub name: String,
    /// MIME type such as `application/pdf`.
    pub content_type: String,
    /// Decoded size in bytes (of the part that was read, see `cut_short`).
    pub size: u64,
    /// Whether the part ran past the bytes read for the digest, so `size` is a lower bound.
    pub cut_short: bool,
    /// For a nested message: its subject and sender (`"Re: x" from Bob <bob@example.org>`).
    pub detail: Option<String>,
}

impl Digest {
    /// Builds the digest of `raw` (at most [`MAX_PARSE_BYTES`] of the message; `total_size`
    /// is the whole message's size). Never fails: empty, malformed, binary or non-UTF-8 input
    /// still yields a digest.
    pub fn build(raw: &[u8], total_size: u64, envelope: &Envelope, opts: &DigestOptions) -> Digest {
        // The bound is ours to keep even if a caller passes more than it should.
        let total_size = total_size.max(raw.len() as u64);
        let raw = &raw[..raw.len().min(MAX_PARSE_BYTES)];
        let closed = headers::close_header_section(raw);
        let input = guard::defuse(&closed);

        // mail-parser is third-party code fed untrusted bytes: if it ever panics, the owner
        // still gets the message as raw text rather than nothing.
        let parsed = catch_unwind(AssertUnwindSafe(|| {
            MessageParser::default()
                .parse(input.as_ref())
                .map(|msg| from_message(&msg, total_size, envelope, opts))
        }));
        let mut digest = match parsed {
            Ok(Some(digest)) => digest,
            Ok(None) => from_unparsed(raw, envelope, opts),
            Err(_) => {
                log::warn!("digest: message parser panicked; digest shows the raw text");
                from_unparsed(raw, envelope, opts)
            }
        };
        digest.bytes_parsed = raw.len() as u64;
        digest.total_size = total_size;
        digest
    }

    /// The text sent to the bridge as `reply`: the header lines, how the message came and
    /// what the envelope adds, a blank line, the body (or `(no text in this message)`) with
    /// the "not shown" and "only the first … were read" lines, then the attachments:
    ///
    /// ```text
    /// Subject: Cron <root@box> backup
    /// From: Cron Daemon <root>
    /// To: root
    /// Date: Tue, 24 Nov 2026 14:16:26 +0000 (not in message; arrival time)
    /// Arrived via sendmail, uid 0 (root)
    ///
    /// backup finished in 42s
    ///
    /// Attachments (1):
    /// - report.pdf (application/pdf, 12.3 KiB)
    /// ```
    ///
    /// Its length is bounded: the body by `max_body_chars`, every other line by the caps
    /// on header values, addresses and attachments.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.body.len() + 1024);
        let subject = if self.subject.is_empty() {
            "(no subject)"
        } else {
            &self.subject
        };
        line(&mut out, "Subject: ", subject);
        if self.from_synthesized {
            line(
                &mut out,
                "From: ",
                &format!("{} ({})", self.from, self.from_note),
            );
        } else {
            line(&mut out, "From: ", &self.from);
        }
        if !self.to.is_empty() {
            line(&mut out, "To: ", &list(&self.to, self.to_more));
        }
        if !self.cc.is_empty() {
            line(&mut out, "Cc: ", &list(&self.cc, self.cc_more));
        }
        if self.date_synthesized {
            line(
                &mut out,
                "Date: ",
                &format!("{} (not in message; arrival time)", self.date),
            );
        } else {
            line(&mut out, "Date: ", &self.date);
        }
        line(&mut out, "Arrived ", &self.via);
        if let Some(sender) = &self.envelope_sender {
            line(&mut out, "Envelope sender: ", sender);
        }
        if self.no_recipients {
            line(&mut out, "", "Envelope: no recipients");
        } else if !self.envelope_recipients.is_empty() {
            let label = if self.to.is_empty() && self.cc.is_empty() {
                "Envelope recipients: "
            } else {
                "Envelope recipients not in To/Cc: "
            };
            line(
                &mut out,
                label,
                &list(&self.envelope_recipients, self.envelope_recipients_more),
            );
        }
        out.push('\n');
        if self.body.is_empty() {
            line(&mut out, "", "(no text in this message)");
        } else {
            line(&mut out, "", &self.body);
        }
        if self.body_chars_cut > 0 {
            line(
                &mut out,
                "",
                &format!("\n[… {} more characters not shown]", self.body_chars_cut),
            );
            if !self.body_tail.is_empty() {
                line(&mut out, "\n", &self.body_tail);
            }
        }
        if self.total_size > self.bytes_parsed {
            line(
                &mut out,
                "",
                &format!(
                    "[message is {}; only its first {} were read for this digest]",
                    human_size(self.total_size),
                    human_size(self.bytes_parsed)
                ),
            );
        }
        if !self.attachments.is_empty() || self.attachments_more > 0 {
            let total = self.attachments.len() + self.attachments_more;
            line(&mut out, "", &format!("\nAttachments ({total}):"));
            for a in &self.attachments {
                let at_least = if a.cut_short { "at least " } else { "" };
                let mut entry = format!(
                    "- {} ({}, {at_least}{})",
                    a.name,
                    a.content_type,
                    human_size(a.size)
                );
                if let Some(detail) = &a.detail {
                    entry.push_str(": ");
                    entry.push_str(detail);
                }
                line(&mut out, "", &entry);
            }
            if self.attachments_more > 0 {
                line(
                    &mut out,
                    "",
                    &format!("- and {} more", self.attachments_more),
                );
            }
        }
        let end = out.trim_end().len();
        out.truncate(end);
        out
    }
}

/// Appends `label` + `value` and a newline.
fn line(out: &mut String, label: &str, value: &str) {
    out.push_str(label);
    out.push_str(value);
    out.push('\n');
}

/// `a, b, c` or `a, b, and 3 more`.
fn list(items: &[String], more: usize) -> String {
    let mut s = items.join(", ");
    if more > 0 {
        s.push_str(&format!(", and {more} more"));
    }
    s
}

/// The digest of a parsed message.
fn from_message(
    msg: &Message<'_>,
    total_size: u64,
    envelope: &Envelope,
    opts: &DigestOptions,
) -> Digest {
    let subject = msg
        .subject()
        .map(|s| headers::legacy_header(msg, "Subject", s).unwrap_or_else(|| s.to_string()))
        .map(|s| one_line(&s, headers::SUBJECT_MAX))
        .unwrap_or_default();

    let header_from = msg
        .from()
        .map(|a| headers::format_addresses(a, MAX_ADDRESSES_SHOWN))
        .filter(|(shown, _)| !shown.is_empty())
        .map(|(shown, more)| list(&shown, more))
        .map(|from| match headers::legacy_header(msg, "From", &from) {
            // Shown as written, once its bytes are read as the Latin-1 they are.
            Some(raw) => one_line(&raw, headers::ADDRESS_MAX),
            None => from,
        })
        .or_else(|| {
            // An unparsable From is still worth showing as written.
            headers::raw_header(msg, "From")
                .map(|raw| one_line(&raw, headers::ADDRESS_MAX))
                .filter(|s| !s.is_empty())
        });
    let (from, from_note) = match header_from {
        Some(from) => (from, String::new()),
        None => headers::synthesized_from(envelope, &opts.hostname),
    };
    let from_synthesized = !from_note.is_empty();

    let (to, to_more) = msg
        .to()
        .map(|a| headers::format_addresses(a, MAX_ADDRESSES_SHOWN))
        .unwrap_or_default();
    let (cc, cc_more) = msg
        .cc()
        .map(|a| headers::format_addresses(a, MAX_ADDRESSES_SHOWN))
        .unwrap_or_default();
    let (date, date_synthesized) = match headers::date(msg) {
        Some(date) => (date, false),
        None => (headers::synthesized_date(envelope.arrival), true),
    };

    let body = parts::body(msg);
    let (attachments, attachments_more) = parts::attachments(
        msg,
        &body.used,
        MAX_ATTACHMENTS_SHOWN,
        total_size > msg.raw_message.len() as u64,
    );

    let mut body_text = body.text;
    if attachments.is_empty() && !has_known_header(msg) {
        // Lines that only look like headers (`Error: disk full` from a script) and no header
        // any mailer writes: the input was not a message, and all of it is the text.
        body_text = tidy(&text::decode_guessing(&msg.raw_message));
    }
    let (shown_body, body_tail, body_chars_cut) = cap_body(&body_text, opts.max_body_chars);

    let mut digest = Digest {
        subject,
        from,
        from_synthesized,
        from_note,
        to,
        to_more,
        cc,
        cc_more,
        date,
        date_synthesized,
        via: headers::via(&envelope.origin),
        envelope_sender: None,
        envelope_recipients: Vec::new(),
        envelope_recipients_more: 0,
        no_recipients: false,
        body: shown_body.to_string(),
        body_tail: body_tail.to_string(),
        body_chars_cut,
        attachments,
        attachments_more,
        bytes_parsed: 0,
        total_size: 0,
    };
    let from_addrs = headers::bare_addresses(msg, HeaderName::From);
    let mut named = headers::bare_addresses(msg, HeaderName::To);
    named.extend(headers::bare_addresses(msg, HeaderName::Cc));
    add_envelope(&mut digest, envelope, &from_addrs, &named);
    digest
}

/// Whether the message has any header mail-parser knows by name (Subject, From,
/// Content-Type, Received, ...), i.e. whether it looks like a message at all.
fn has_known_header(msg: &Message<'_>) -> bool {
    msg.parts.first().is_some_and(|root| {
        root.headers
            .iter()
            .any(|h| !matches!(h.name, HeaderName::Other(_)))
    })
}

/// The digest of input the parser found no headers in: the bytes as text, with From and
/// Date from the envelope.
fn from_unparsed(raw: &[u8], envelope: &Envelope, opts: &DigestOptions) -> Digest {
    let text = tidy(&text::decode_guessing(raw));
    let (body, body_tail, body_chars_cut) = cap_body(&text, opts.max_body_chars);
    let (from, from_note) = headers::synthesized_from(envelope, &opts.hostname);
    let mut digest = Digest {
        subject: String::new(),
        from,
        from_synthesized: true,
        from_note,
        to: Vec::new(),
        to_more: 0,
        cc: Vec::new(),
        cc_more: 0,
        date: headers::synthesized_date(envelope.arrival),
        date_synthesized: true,
        via: headers::via(&envelope.origin),
        envelope_sender: None,
        envelope_recipients: Vec::new(),
        envelope_recipients_more: 0,
        no_recipients: false,
        body: body.to_string(),
        body_tail: body_tail.to_string(),
        body_chars_cut,
        attachments: Vec::new(),
        attachments_more: 0,
        bytes_parsed: 0,
        total_size: 0,
    };
    add_envelope(&mut digest, envelope, &[], &[]);
    digest
}

/// Fills in what the envelope adds: the sender when no From address matches it, and the
/// recipients the To/Cc headers do not name (Bcc shows up only here).
fn add_envelope(digest: &mut Digest, envelope: &Envelope, from_addrs: &[String], named: &[String]) {
    let sender = envelope.sender.trim();
    if sender.is_empty() {
        // A bounce or an auto-reply, whatever its From says (or the From made up for it).
        digest.envelope_sender = Some("<> (null sender)".into());
    } else if !digest.from_synthesized
        && !from_addrs.iter().any(|a| headers::same_mailbox(a, sender))
    {
        digest.envelope_sender = Some(one_line(sender, headers::ADDRESS_MAX));
    }
    if envelope.recipients.is_empty() {
        digest.no_recipients = true;
        return;
    }
    for rcpt in &envelope.recipients {
        if named.iter().any(|a| headers::same_mailbox(a, rcpt)) {
            continue;
        }
        if digest.envelope_recipients.len() < MAX_ENVELOPE_RECIPIENTS_SHOWN {
            digest
                .envelope_recipients
                .push(one_line(rcpt, headers::ADDRESS_MAX));
        } else {
            digest.envelope_recipients_more += 1;
        }
    }
}

#[cfg(test)]
mod tests;
