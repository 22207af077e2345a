//! The "who, when, how" lines of a digest: decoded message headers, and what the envelope
//! adds to them (how the message came, the envelope sender and the recipients the headers do
//! not name, such as Bcc).

use std::time::SystemTime;

use mail_parser::{Addr, Address, HeaderName, Message};

use super::text::{decode_legacy, one_line};
use crate::envelope::{Envelope, Origin};

/// Longest single address shown (`Name <addr>`), in characters.
pub const ADDRESS_MAX: usize = 200;
/// Longest Subject shown, in characters.
pub const SUBJECT_MAX: usize = 300;
/// Longest Date shown, in characters.
const DATE_MAX: usize = 100;
/// Longest HELO name shown, in characters.
const HELO_MAX: usize = 100;

/// Formats an address header value as `Name <addr>` / `addr` / `Name` entries (groups
/// flattened; an empty group such as `undisclosed-recipients:;` shown by its name); returns
/// at most `max` entries and how many more there were.
pub fn format_addresses(value: &Address<'_>, max: usize) -> (Vec<String>, usize) {
    let mut shown = Vec::new();
    let mut more = 0usize;
    let mut push = |entry: String| {
        if entry.is_empty() {
            return;
        }
        if shown.len() < max {
            shown.push(entry);
        } else {
            more += 1;
        }
    };
    match value {
        Address::List(list) => list.iter().for_each(|a| push(format_addr(a))),
        Address::Group(groups) => {
            for group in groups {
                if group.addresses.is_empty() {
                    let name = one_line(group.name.as_deref().unwrap_or(""), ADDRESS_MAX);
                    if !name.is_empty() {
                        push(format!("{name}:;"));
                    }
                }
                group.addresses.iter().for_each(|a| push(format_addr(a)));
            }
        }
    }
    (shown, more)
}

/// One address as a reader wants it: `Name <addr>`, or whichever of the two there is.
fn format_addr(a: &Addr<'_>) -> String {
    let name = one_line(a.name.as_deref().unwrap_or(""), ADDRESS_MAX);
    let addr = one_line(a.address.as_deref().unwrap_or(""), ADDRESS_MAX);
    let full = match (name.is_empty(), addr.is_empty()) {
        (false, false) if !name.eq_ignore_ascii_case(&addr) => format!("{name} <{addr}>"),
        (_, false) => addr,
        (false, true) => name,
        (true, true) => String::new(),
    };
    one_line(&full, ADDRESS_MAX)
}

/// Every bare address (lowercased) of the given header in the message, for comparing with
/// the envelope; unbounded by the display caps but by the message itself.
pub fn bare_addresses(msg: &Message<'_>, name: HeaderName<'static>) -> Vec<String> {
    msg.header_values(name)
        .filter_map(|v| v.as_address())
        .flat_map(|a| a.iter())
        // A bare word such as `To: root` is parsed as a name without an address, but to
        // a local MTA it is the mailbox `root`.
        .filter_map(|a| {
            a.address
                .as_deref()
                .or(a.name.as_deref().filter(|n| !n.trim().contains(' ')))
        })
        .map(|a| a.trim().to_ascii_lowercase())
        .collect()
}

/// Whether two mailbox addresses name the same mailbox, allowing one to be unqualified
/// (`root` and `root@host` are the same local user to a local MTA).
pub fn same_mailbox(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    match (a.split_once('@'), b.split_once('@')) {
        (None, Some((local, _))) => local.eq_ignore_ascii_case(a),
        (Some((local, _)), None) => local.eq_ignore_ascii_case(b),
        _ => false,
    }
}

/// The decoded Date, or `None` when the message has none worth showing.
pub fn date(msg: &Message<'_>) -> Option<String> {
    // `to_rfc822` does arithmetic that overflows on out-of-range fields, so only valid dates
    // go through it; anything else is shown as written.
    if let Some(d) = msg.date().filter(|d| d.is_valid()) {
        return Some(d.to_rfc822());
    }
    let raw = raw_header(msg, "Date")?;
    let shown = one_line(&raw, DATE_MAX);
    (!shown.is_empty()).then_some(shown)
}

/// A header (Subject, From) that mail-parser decoded with replacement characters, read again:
/// raw 8-bit Latin-1 as Windows-1252, and RFC 2047 encoded words whose charset it does not
/// know, or whose bytes contradict their label, as [`decode_word`] reads them.
pub fn legacy_header(msg: &Message<'_>, name: &str, decoded: &str) -> Option<String> {
    if !decoded.contains('\u{fffd}') {
        return None;
    }
    let raw = raw_header_bytes(msg, name)?;
    if raw.windows(2).any(|w| w == b"=?") {
        let text = decode_words(raw);
        return (!text.contains('\u{fffd}')).then_some(text);
    }
    decode_legacy(raw)
}

/// Decodes every RFC 2047 encoded word in a raw header value, dropping the blanks between
/// two adjacent words (RFC 2047 §6.2); the text between words is read as UTF-8 when it is,
/// else as Windows-1252.
fn decode_words(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    let mut after_word = false;
    while !rest.is_empty() {
        let Some(start) = rest.windows(2).position(|w| w == b"=?") else {
            out.push_str(&super::text::decode_guessing(rest));
            break;
        };
        match encoded_word(&rest[start..]) {
            Some((text, len)) => {
                let between = &rest[..start];
                if !(after_word && between.iter().all(|b| b.is_ascii_whitespace())) {
                    out.push_str(&super::text::decode_guessing(between));
                }
                out.push_str(&text);
                rest = &rest[start + len..];
                after_word = true;
            }
            None => {
                out.push_str(&super::text::decode_guessing(&rest[..start + 2]));
                rest = &rest[start + 2..];
                after_word = false;
            }
        }
    }
    out
}

/// The longest encoded text of one RFC 2047 word we look for (the RFC's limit for the whole
/// word is 75 bytes; real mailers write longer ones).
const MAX_WORD_TEXT: usize = 1000;

/// One encoded word `=?charset[*lang]?B|Q?text?=` at the start of `word`: its text and its
/// length in bytes, or `None` when it is not one.
fn encoded_word(word: &[u8]) -> Option<(String, usize)> {
    let body = word.strip_prefix(b"=?")?;
    let q1 = body.iter().take(76).position(|&b| b == b'?')?;
    let charset = &body[..q1];
    let charset = charset.split(|&b| b == b'*').next().unwrap_or(charset);
    let encoding = *body.get(q1 + 1)?;
    if body.get(q1 + 2) != Some(&b'?') {
        return None;
    }
    let text_start = q1 + 3;
    // Bounded: RFC 2047 allows 75 bytes a word (mailers exceed it, so more is taken), and an
    // unbounded search from every `=?` of a hostile header would be quadratic.
    let text_len = body[text_start..]
        .windows(2)
        .take(MAX_WORD_TEXT)
        .position(|w| w == b"?=")?;
    let text = &body[text_start..text_start + text_len];
    if text.iter().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let bytes = match encoding.to_ascii_uppercase() {
        b'B' => super::text::lenient_base64(text),
        b'Q' => q_decode(text),
        _ => return None,
    };
    Some((decode_word(charset, &bytes), 2 + text_start + text_len + 2))
}

/// The `Q` encoding of RFC 2047 §4.2: `_` is a space, `=XX` a byte.
fn q_decode(text: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'_' => out.push(b' '),
            b'=' => match (
                text.get(i + 1).and_then(|&b| hex(b)),
                text.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 2;
                }
                _ => out.push(b'='),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// An encoded word's bytes: through its charset when we know it and the bytes fit it,
/// otherwise as UTF-8 when they are, else as Windows-1252 (what unlabelled or mislabelled
/// 8-bit mail nearly always is).
fn decode_word(charset: &[u8], bytes: &[u8]) -> String {
    let label = String::from_utf8_lossy(charset).to_ascii_lowercase();
    let utf8_label = label == "utf-8" || label == "utf8";
    if !utf8_label {
        if let Some(decode) =
            mail_parser::decoders::charsets::map::charset_decoder(label.as_bytes())
        {
            let text = decode(bytes);
            if !text.contains('\u{fffd}') {
                return text;
            }
        }
    }
    super::text::decode_guessing(bytes).into_owned()
}

/// The undecoded text of the first header called `name` in the top-level header block,
/// read with bounds checks (the parser's own accessor indexes without them).
pub fn raw_header(msg: &Message<'_>, name: &str) -> Option<String> {
    raw_header_bytes(msg, name).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// The undecoded bytes of the first header called `name` in the top-level header block.
fn raw_header_bytes<'a>(msg: &'a Message<'_>, name: &str) -> Option<&'a [u8]> {
    let root = msg.parts.first()?;
    let h = root
        .headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case(name))?;
    msg.raw_message
        .get(h.offset_start as usize..h.offset_end as usize)
}

/// A From for a message that has none, and the note saying where it came from: the
/// address, as `Name <address>` when the submission gave a full name (`sendmail -F`, as
/// Postfix uses it only when the message has no From). The digest of a message delivered
/// later from the spool reads the name from the spooled envelope, so it is the same as the
/// digest the bridge would have had at once.
pub fn synthesized_from(envelope: &Envelope, hostname: &str) -> (String, String) {
    let (addr, note) = synthesized_address(envelope, hostname);
    // The name is the caller's text: one clean line, like every header value shown.
    let name = envelope
        .origin
        .full_name()
        .map(|name| one_line(name, ADDRESS_MAX))
        .filter(|name| !name.is_empty());
    match name {
        Some(name) => (format!("{name} <{addr}>"), note),
        None => (addr, note),
    }
}

/// The address part of [`synthesized_from`].
fn synthesized_address(envelope: &Envelope, hostname: &str) -> (String, String) {
    let sender = envelope.sender.trim();
    if !sender.is_empty() {
        let addr = if sender.contains('@') || hostname.is_empty() {
            sender.to_string()
        } else {
            format!("{sender}@{hostname}")
        };
        return (
            one_line(&addr, ADDRESS_MAX),
            "not in message; envelope sender".into(),
        );
    }
    match &envelope.origin {
        Origin::Local { user, .. } if !user.is_empty() => {
            let addr = if hostname.is_empty() {
                user.clone()
            } else {
                format!("{user}@{hostname}")
            };
            (
                one_line(&addr, ADDRESS_MAX),
                "not in message; local user".into(),
            )
        }
        _ => (
            "MAILER-DAEMON".into(),
            "not in message; null envelope sender".into(),
        ),
    }
}

/// The arrival time as a Date, for a message that has none.
pub fn synthesized_date(arrival: SystemTime) -> String {
    crate::datetime::rfc5322(arrival)
}

/// How the message came: `via sendmail, uid 0 (root)` or `via SMTP from 127.0.0.1 (helo)`.
pub fn via(origin: &Origin) -> String {
    match origin {
        Origin::Local { uid, user, .. } => {
            let user = one_line(user, ADDRESS_MAX);
            if user.is_empty() || user == format!("uid{uid}") {
                format!("via sendmail, uid {uid}")
            } else {
                format!("via sendmail, uid {uid} ({user})")
            }
        }
        Origin::Smtp { peer, helo } => {
            let helo = one_line(helo, HELO_MAX);
            if helo.is_empty() {
                format!("via SMTP from {} (no HELO name)", peer.ip())
            } else {
                format!("via SMTP from {} ({helo})", peer.ip())
            }
        }
    }
}

/// Where the header section of `raw` really ends, made explicit: as Postfix's cleanup does,
/// the headers stop at the first line that is neither a header field (`Name: value`, the
/// name printable ASCII without spaces or `:`) nor the continuation of one, and a blank line
/// is put there when the message has none. Input that does not start with a header (script
/// output piped to `sendmail`: `Backup status: FAILED`) becomes all body. A leading mbox
/// `From ` line counts as a header. A message of headers only gets its last line ended and
/// a blank line. Borrowed, untouched, when the headers end properly.
pub fn close_header_section(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mut start = 0usize;
    let mut first = true;
    while start < raw.len() {
        let end = raw[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |p| start + p);
        let line = &raw[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return raw.into();
        }
        let is_header = if matches!(line[0], b' ' | b'\t') {
            !first
        } else {
            (first && line.starts_with(b"From ")) || is_field(line)
        };
        if !is_header {
            let mut closed = Vec::with_capacity(raw.len() + 1);
            closed.extend_from_slice(&raw[..start]);
            closed.push(b'\n');
            closed.extend_from_slice(&raw[start..]);
            return closed.into();
        }
        first = false;
        start = end + 1;
    }
    if raw.is_empty() {
        return raw.into();
    }
    // Headers only: the last one may lack its line end (`printf 'Subject: x' | sendmail`),
    // which the parser would drop with it. Postfix takes the partial line as a line.
    let mut closed = raw.to_vec();
    if !raw.ends_with(b"\n") {
        closed.push(b'\n');
    }
    closed.push(b'\n');
    closed.into()
}

/// Whether `line` starts a header field: a name of printable ASCII other than `:` (spaces
/// and tabs allowed only between it and the colon, the obsolete syntax), then `:`.
fn is_field(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = &line[..colon];
    let name_end = name
        .iter()
        .rposition(|&b| !matches!(b, b' ' | b'\t'))
        .map_or(0, |p| p + 1);
    name_end > 0 && name[..name_end].iter().all(|&b| (33..=126).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::UNIX_EPOCH;

    #[test]
    fn header_section_is_closed_where_postfix_closes_it() {
        let cases: &[(&str, &str)] = &[
            ("Subject: x\n\nbody\n", "Subject: x\n\nbody\n"),
            (
                "Subject: x\r\n folded\r\n\r\nbody",
                "Subject: x\r\n folded\r\n\r\nbody",
            ),
            ("Subject: only headers", "Subject: only headers\n\n"),
            ("To: a@b\nSubject: x\n", "To: a@b\nSubject: x\n\n"),
            ("Subject: crlf\r\nTo: a@b", "Subject: crlf\r\nTo: a@b\n\n"),
            ("", ""),
            (
                "Backup status: FAILED\nHost: web1\n\nrsync",
                "\nBackup status: FAILED\nHost: web1\n\nrsync",
            ),
            (
                "To: root\nBackup status: FAILED\n\nrsync",
                "To: root\n\nBackup status: FAILED\n\nrsync",
            ),
            (
                "Subject: x\nthis is the body\n",
                "Subject: x\n\nthis is the body\n",
            ),
            (" indented first\n", "\n indented first\n"),
            ("hello there\n", "\nhello there\n"),
            (":no name\n", "\n:no name\n"),
            ("Subject : obsolete\n\nb", "Subject : obsolete\n\nb"),
            (
                "From root Tue Nov 24 10:00:00 2026\nSubject: x\n\nb",
                "From root Tue Nov 24 10:00:00 2026\nSubject: x\n\nb",
            ),
            ("Subject: x\nFrom nobody\n", "Subject: x\n\nFrom nobody\n"),
        ];
        for (input, want) in cases {
            let got = close_header_section(input.as_bytes());
            assert_eq!(String::from_utf8_lossy(&got), *want, "{input:?}");
        }
    }

    fn envelope(sender: &str, origin: Origin) -> Envelope {
        Envelope {
            sender: sender.into(),
            recipients: vec![],
            origin,
            arrival: UNIX_EPOCH,
        }
    }

    fn local(uid: u32, user: &str) -> Origin {
        Origin::Local {
            uid,
            user: user.into(),
            full_name: None,
        }
    }

    fn smtp(peer: &str, helo: &str) -> Origin {
        Origin::Smtp {
            peer: peer
                .parse::<SocketAddr>()
                .unwrap_or_else(|e| panic!("{peer}: {e}")),
            helo: helo.into(),
        }
    }

    #[test]
    fn synthesized_from_cases() {
        let cases: &[(&str, Origin, &str, &str)] = &[
            ("root@box", local(0, "root"), "root@box", "envelope sender"),
            ("root", local(0, "root"), "root@host", "envelope sender"),
            (
                "alice@example.org",
                smtp("127.0.0.1:2525", "x"),
                "alice@example.org",
                "envelope sender",
            ),
            ("", local(1000, "alice"), "alice@host", "local user"),
            (
                "",
                smtp("127.0.0.1:2525", "x"),
                "MAILER-DAEMON",
                "null envelope sender",
            ),
        ];
        for (sender, origin, want, note) in cases {
            let (from, why) = synthesized_from(&envelope(sender, origin.clone()), "host");
            assert_eq!(from, *want, "sender {sender:?}");
            assert!(
                why.starts_with("not in message; ") && why.ends_with(note),
                "{why}"
            );
        }
    }

    #[test]
    fn via_cases() {
        let cases: &[(Origin, &str)] = &[
            (local(0, "root"), "via sendmail, uid 0 (root)"),
            (local(4242, "uid4242"), "via sendmail, uid 4242"),
            (
                smtp("127.0.0.1:40000", "box.lan"),
                "via SMTP from 127.0.0.1 (box.lan)",
            ),
            (smtp("[::1]:40000", ""), "via SMTP from ::1 (no HELO name)"),
            (
                smtp("127.0.0.1:1", "evil\r\nSubject: x"),
                "via SMTP from 127.0.0.1 (evil Subject: x)",
            ),
        ];
        for (origin, want) in cases {
            assert_eq!(via(origin), *want);
        }
    }

    #[test]
    fn same_mailbox_cases() {
        let cases: &[(&str, &str, bool)] = &[
            ("root", "root@host", true),
            ("Root@Host", "root@host", true),
            ("root@a", "root@b", false),
            ("bob", "alice@host", false),
            ("", "", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(same_mailbox(a, b), *want, "{a} vs {b}");
        }
    }
}
