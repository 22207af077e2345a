//! Keeps nested messages away from mail-parser, which cannot be trusted with them.
//!
//! mail-parser 0.11 represents an attached message (`message/rfc822`, `message/global`, and
//! every part of a `multipart/digest`) as a `Message` value inside its parent. Measured on
//! this crate's dependency: 10,000 nested `message/rfc822` levels (a 400 KB message)
//! overflow the stack when the parse result is dropped, and 1,000 levels inside one
//! base64-encoded `message/rfc822` part (55 KB) overflow it during the parse, while copying
//! the decoded part once per level (memory quadratic in the message size). A stack
//! overflow aborts the whole process, which no `catch_unwind` can stop.
//!
//! So before parsing, every `Content-Type` header that would make mail-parser nest is
//! rewritten to a type it treats as an opaque attachment (`message/rfc822` ->
//! `message/x-rfc822`, `multipart/digest` -> `multipart/x-digest`). The digest then lists
//! attached messages from their own headers ([`nested_headers`], which parses one header
//! block and nothing below it), and never hands mail-parser a tree deeper than one level.

use std::borrow::Cow;

use mail_parser::{Message, MessageParser};

/// Content types that make mail-parser parse a nested message, and what each becomes.
const DEFUSED: [(&str, &str); 3] = [
    ("message/rfc822", "message/x-rfc822"),
    ("message/global", "message/x-global"),
    ("multipart/digest", "multipart/x-digest"),
];

/// The content type a defused attached message is shown with (`message/x-rfc822` was
/// `message/rfc822`), or `None` when `content_type` is not an attached message.
pub fn original_message_type(content_type: &str) -> Option<&'static str> {
    match content_type {
        "message/x-rfc822" | "message/rfc822" => Some("message/rfc822"),
        "message/x-global" | "message/global" => Some("message/global"),
        _ => None,
    }
}

/// Returns `raw` with every nesting `Content-Type` defused (borrowed, untouched, when it
/// has none, which is nearly always).
///
/// Header lines are found the way mail-parser finds them, generously: any line whose name,
/// ignoring whitespace and case, is `content-type`, wherever it is (a false match inside a
/// body only renames a type in quoted text). Its value up to the first `;` outside a
/// comment, with comments, quotes and whitespace (folding included) removed, is the type.
pub fn defuse(raw: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    // Bytes of `raw` already copied into `out`.
    let mut copied = 0usize;
    let mut line_start = 0usize;
    while line_start < raw.len() {
        let line_end = raw[line_start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |p| line_start + p);
        let mut next_line = line_end + 1;
        if let Some(value_start) = content_type_value(&raw[line_start..line_end]) {
            let value_start = line_start + value_start;
            let (type_end, normalised) = type_of(raw, value_start);
            if let Some((_, replacement)) = DEFUSED.iter().find(|(t, _)| *t == normalised) {
                let buf = out.get_or_insert_with(|| Vec::with_capacity(raw.len() + 64));
                buf.extend_from_slice(&raw[copied..value_start]);
                buf.push(b' ');
                buf.extend_from_slice(replacement.as_bytes());
                copied = type_end;
            }
            // Go on after the whole (folded) header: its continuation lines are part of
            // this value, and skipping them means every byte is looked at once, so a
            // header folded over a million lines costs linear time, not quadratic.
            next_line = header_end(raw, type_end) + 1;
        }
        line_start = next_line;
    }
    match out {
        None => Cow::Borrowed(raw),
        Some(mut buf) => {
            buf.extend_from_slice(raw.get(copied..).unwrap_or_default());
            Cow::Owned(buf)
        }
    }
}

/// The offset of the `\n` ending the folded header that `from` is in (or the input's
/// length): the first line end not followed by a space or tab.
fn header_end(raw: &[u8], from: usize) -> usize {
    let mut i = from;
    while let Some(p) = raw
        .get(i..)
        .and_then(|r| r.iter().position(|&b| b == b'\n'))
    {
        i += p;
        if !matches!(raw.get(i + 1), Some(b' ' | b'\t')) {
            return i;
        }
        i += 1;
    }
    raw.len()
}

/// If `line` is a `Content-Type` header line, the offset of its value (after the colon).
fn content_type_value(line: &[u8]) -> Option<usize> {
    const NAME: &[u8] = b"content-type";
    let mut matched = 0usize;
    for (i, &b) in line.iter().enumerate() {
        match b {
            // mail-parser skips ASCII whitespace (form feed included) anywhere in a header
            // name, and colons before it.
            _ if b.is_ascii_whitespace() => {}
            b':' if matched == 0 => {}
            b':' => return (matched == NAME.len()).then_some(i + 1),
            _ => {
                if matched < NAME.len() && b.to_ascii_lowercase() == NAME[matched] {
                    matched += 1;
                } else {
                    return None;
                }
            }
        }
    }
    None
}

/// Reads a header value starting at `start` (continuing over folded lines) up to the first
/// `;` outside a comment; returns where the type ends and the type, lowercased, without
/// comments, quotes and whitespace.
fn type_of(raw: &[u8], start: usize) -> (usize, String) {
    let mut norm = String::new();
    let mut depth = 0usize;
    let mut escaped = false;
    let mut i = start;
    while i < raw.len() {
        let b = raw[i];
        if b == b'\n' {
            // Folding: the value goes on if the next line starts with whitespace.
            if matches!(raw.get(i + 1), Some(b' ' | b'\t')) {
                i += 1;
                continue;
            }
            return (i, norm);
        }
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'(' {
            depth += 1;
        } else if b == b')' && depth > 0 {
            depth -= 1;
        } else if depth == 0 {
            if b == b';' {
                return (i, norm);
            }
            // No real type is this long; stop collecting, but keep finding the end.
            if !b.is_ascii_whitespace() && b != b'"' && norm.len() < 64 {
                norm.push(char::from(b.to_ascii_lowercase()));
            }
        }
        i += 1;
    }
    (i, norm)
}

/// Parses only the header block of an attached message (mail-parser's `parse_headers`
/// stops after it, so nothing nested is parsed), for its subject and sender.
pub fn nested_headers(bytes: &[u8]) -> Option<Message<'_>> {
    MessageParser::default()
        .parse_headers(bytes)
        .filter(|m| !m.parts.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defused(s: &str) -> String {
        String::from_utf8_lossy(&defuse(s.as_bytes())).into_owned()
    }

    #[test]
    fn rewrites_nesting_types_only() {
        let cases: &[(&str, &str)] = &[
            (
                "Content-Type: message/rfc822\n\nx",
                "Content-Type: message/x-rfc822\n\nx",
            ),
            (
                "content-type:Message/RFC822; name=\"a.eml\"\n",
                "content-type: message/x-rfc822; name=\"a.eml\"\n",
            ),
            (
                "Content-Type: message/\n rfc822\n",
                "Content-Type: message/x-rfc822\n",
            ),
            (
                "Content-Type: message/(c;)rfc822;x=1\n",
                "Content-Type: message/x-rfc822;x=1\n",
            ),
            (
                "Content - Type : message / global\r\n",
                "Content - Type : message/x-global\n",
            ),
            (
                "Content-Type: multipart/digest; boundary=b\n",
                "Content-Type: multipart/x-digest; boundary=b\n",
            ),
            ("Content-Type: text/plain\n", "Content-Type: text/plain\n"),
            (
                "Content-Type: message/partial\n",
                "Content-Type: message/partial\n",
            ),
            (
                "X-Content-Type: message/rfc822\n",
                "X-Content-Type: message/rfc822\n",
            ),
            (
                "Content-Type-X: message/rfc822\n",
                "Content-Type-X: message/rfc822\n",
            ),
            (
                "Content-Type: message/rfc822(\n Content-Type: message/rfc822)\nX: y\n",
                "Content-Type: message/x-rfc822\nX: y\n",
            ),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(defused(input), *want, "{input:?}");
        }
        assert!(matches!(defuse(b"Subject: x\n\nbody"), Cow::Borrowed(_)));
    }

    #[test]
    fn header_end_cases() {
        let cases: &[(&str, usize, usize)] = &[
            ("a\nb", 0, 1),
            ("a\n b\n\tc\nd", 0, 7),
            ("a\n b", 0, 4),
            ("abc", 0, 3),
            ("", 0, 0),
        ];
        for (input, from, want) in cases {
            assert_eq!(header_end(input.as_bytes(), *from), *want, "{input:?}");
        }
    }

    /// A header folded over many lines that each look like a Content-Type is scanned once
    /// (this would take hours if every continuation line were rescanned to the end).
    #[test]
    fn long_folded_header_is_linear() {
        let raw = "Content-Type: text/plain; x=(\n".to_string()
            + &" Content-Type: (\n".repeat(200_000)
            + " Content-Type: message/rfc822\n\nbody\n";
        assert!(matches!(defuse(raw.as_bytes()), Cow::Borrowed(_)));
    }

    /// The measured crash: 10,000 nested messages. With defusing, parse and drop are flat.
    #[test]
    fn deep_nesting_is_flat_after_defusing() {
        let raw = "Content-Type: message/rfc822\n\n".repeat(10_000) + "Subject: inner\n\nhi\n";
        let input = defuse(raw.as_bytes());
        let parsed = MessageParser::default().parse(input.as_ref());
        let msg = parsed
            .as_ref()
            .map(|m| (m.parts.len(), m.parts.iter().any(|p| p.is_message())));
        assert_eq!(msg, Some((1, false)));
    }
}
