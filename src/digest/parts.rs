//! Choosing what of a parsed message's MIME parts the owner reads (the text body) and what is
//! only listed (attachments, inline images, nested messages).
//!
//! mail-parser already flattens the MIME tree into `text_body`, `html_body` and `attachments`
//! lists of part indices, so nothing here recurses; a nested `message/rfc822` is looked into
//! one level only, for its subject and sender.

use std::borrow::Cow;
use std::collections::HashSet;

use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::{Encoding, Message, MessageParser, MessagePart, MimeHeaders, PartType};

use super::text::{
    decode_guessing, decode_legacy, decode_lines, has_utf8_sequences, lenient_base64, one_line,
    tidy, windows_1252,
};
use super::Attachment;
use super::{guard, html};

/// How many levels of attached messages are looked into for text when a message has none.
const NESTED_BODY_DEPTH: usize = 3;
/// Longest attachment name shown, in characters.
const NAME_MAX: usize = 120;
/// Longest MIME type shown, in characters.
const TYPE_MAX: usize = 80;
/// Longest nested-message subject shown in an attachment line, in characters.
const NESTED_SUBJECT_MAX: usize = 120;

/// The readable body of a message and the parts it was made from.
pub struct Body {
    /// Tidied text; empty when the message has no readable text.
    pub text: String,
    /// Indices (into `Message::parts`) of the parts shown as body, so they are not also
    /// listed as attachments.
    pub used: HashSet<u32>,
}

/// Picks and decodes the text the owner reads: the plain-text body parts (mail-parser puts
/// the text/plain side of a multipart/alternative there, and HTML when a message has only
/// HTML); failing that the HTML body parts; failing that the stray text parts that
/// mail-parser filed as attachments because the message was broken (see [`is_stray_text`]).
///
/// A message with no text of its own whose content is an attached message (a forward
/// without comment, a message wrapped as `message/rfc822`) shows that message's text,
/// looking at most [`NESTED_BODY_DEPTH`] levels down; the attached message is still listed.
pub fn body(msg: &Message<'_>) -> Body {
    let mut body = own_body(msg);
    if body.text.is_empty() {
        if let Some(text) = nested_text(msg) {
            body.text = format!("[text of the attached message]\n\n{text}");
        }
    }
    body
}

/// The text of the first attached message that has any, looking [`NESTED_BODY_DEPTH`]
/// levels down. Each level is parsed on its own (defused like the outer message), one at a
/// time, so nothing nests in memory.
fn nested_text(msg: &Message<'_>) -> Option<String> {
    let mut bytes = first_nested(msg)?.to_vec();
    for _ in 0..NESTED_BODY_DEPTH {
        let next = {
            let input = guard::defuse(&bytes);
            let nested = MessageParser::default().parse(input.as_ref())?;
            let text = own_body(&nested).text;
            if !text.is_empty() {
                return Some(text);
            }
            first_nested(&nested)?.to_vec()
        };
        bytes = next;
    }
    None
}

/// The content of the first attached message, if any.
fn first_nested<'a>(msg: &'a Message<'_>) -> Option<&'a [u8]> {
    msg.attachments.iter().find_map(|&id| {
        let part = msg.parts.get(id as usize)?;
        let is_message = matches!(part.body, PartType::Binary(_) | PartType::InlineBinary(_))
            && guard::original_message_type(&type_of(part)).is_some();
        is_message.then(|| part.contents())
    })
}

/// A part's declared MIME type, lowercased (`text/plain`), empty when it has none.
fn type_of(part: &MessagePart<'_>) -> String {
    match part.content_type() {
        Some(ct) => match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub).to_ascii_lowercase(),
            None => ct.ctype().to_ascii_lowercase(),
        },
        None => String::new(),
    }
}

/// The message's own text, without looking into attached messages.
fn own_body(msg: &Message<'_>) -> Body {
    let mut body = Body {
        text: String::new(),
        used: HashSet::new(),
    };
    collect(msg, msg.text_body.iter().copied(), &mut body);
    if body.text.is_empty() {
        collect(msg, msg.html_body.iter().copied(), &mut body);
    }
    if body.text.is_empty() {
        let stray = msg
            .attachments
            .iter()
            .copied()
            .filter(|&id| msg.parts.get(id as usize).is_some_and(is_stray_text));
        collect(msg, stray, &mut body);
    }
    body
}

/// Whether a part that mail-parser listed as an attachment is really body text that broken
/// structure pushed there: text with no file name and no `attachment` disposition, declared
/// as text/plain, text/html, nothing, or multipart (a multipart whose boundary never occurs
/// is just text), such as a body whose base64 was cut short.
fn is_stray_text(p: &MessagePart<'_>) -> bool {
    if is_readable_binary(p) {
        return true;
    }
    matches!(p.body, PartType::Text(_) | PartType::Html(_))
        && p.attachment_name().is_none()
        && !p.content_disposition().is_some_and(|d| d.is_attachment())
        && p.content_type().is_none_or(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                || ct.ctype().eq_ignore_ascii_case("text")
                    && ct.subtype().is_none_or(|s| {
                        s.eq_ignore_ascii_case("plain") || s.eq_ignore_ascii_case("html")
                    })
        })
}

/// Whether a part the parser kept as bytes is text meant for a person: a delivery or read
/// report's status fields (`message/delivery-status`: the failed recipient and the reason,
/// all a bounce without a text part says), or a multipart whose boundary is missing, which
/// the parser cannot split and is just text.
fn is_readable_binary(p: &MessagePart<'_>) -> bool {
    matches!(p.body, PartType::Binary(_) | PartType::InlineBinary(_))
        && p.attachment_name().is_none()
        && p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                || ct.ctype().eq_ignore_ascii_case("message")
                    && ct.subtype().is_some_and(|s| {
                        [
                            "delivery-status",
                            "global-delivery-status",
                            "disposition-notification",
                        ]
                        .iter()
                        .any(|t| s.eq_ignore_ascii_case(t))
                    })
        })
}

/// Appends the readable text of the given parts, separated by a blank line.
fn collect(msg: &Message<'_>, ids: impl Iterator<Item = u32>, body: &mut Body) {
    for id in ids {
        let Some(part) = msg.parts.get(id as usize) else {
            continue;
        };
        let Some(text) = part_text(msg, part) else {
            continue;
        };
        body.used.insert(id);
        if text.is_empty() {
            continue;
        }
        if !body.text.is_empty() {
            body.text.push_str("\n\n");
        }
        body.text.push_str(&text);
    }
}

/// The tidied text of one text or HTML part; `None` for parts that hold no text.
fn part_text(msg: &Message<'_>, part: &MessagePart<'_>) -> Option<String> {
    let bytes_as_text;
    let (raw, is_html) = match &part.body {
        PartType::Text(t) => (t.as_ref(), false),
        PartType::Html(h) => (h.as_ref(), true),
        PartType::Binary(b) | PartType::InlineBinary(b) if is_readable_binary(part) => {
            bytes_as_text = decode_guessing(b);
            (bytes_as_text.as_ref(), false)
        }
        _ => return None,
    };
    let is_html = is_html || part.is_content_type("text", "html");
    let repaired;
    let raw = if part.is_encoding_problem && declared_base64(part) {
        // mail-parser gives up on base64 that is cut short and hands back the encoded text;
        // decode what is there so the reader sees words, not base64.
        repaired = decode_repaired(part, &lenient_base64(raw.as_bytes()));
        repaired.as_str()
    } else if let Some(legacy) = redecoded(msg, part, raw) {
        repaired = legacy;
        repaired.as_str()
    } else {
        raw
    };
    Some(if is_html {
        tidy(&html::to_text(raw))
    } else {
        tidy(raw)
    })
}

/// The text of a part whose bytes contradict its declared charset, decoded as what they
/// are; `None` when the parser's reading stands:
///
/// - Labelled ASCII or a single-byte charset (Latin-1, Windows-1252, KOI8-R…) but valid
///   UTF-8 with non-ASCII characters: UTF-8. Cron in the C locale labels its mail
///   `ANSI_X3.4-1968` whatever the command printed, and text in a legacy charset is valid
///   UTF-8 with multibyte sequences only by a rare accident.
/// - Labelled UTF-8, an unknown charset or none, but not UTF-8 and holding no UTF-8
///   sequence at all: Windows-1252, the superset of Latin-1 that such mail nearly always
///   is (see [`decode_legacy`]), instead of replacement characters.
///
/// Multibyte and stateful charsets (Shift_JIS, ISO-2022-JP, UTF-16…) are left as declared.
fn redecoded(msg: &Message<'_>, part: &MessagePart<'_>, decoded: &str) -> Option<String> {
    let label = part.content_type().and_then(|ct| ct.attribute("charset"));
    let suspicious = match charset_class(label) {
        CharsetClass::SingleByte => !decoded.is_ascii(),
        CharsetClass::Utf8OrUnknown => decoded.contains('\u{fffd}'),
        CharsetClass::Other => false,
    };
    if !suspicious {
        return None;
    }
    let bytes = transfer_decoded(msg, part)?;
    match (std::str::from_utf8(&bytes), charset_class(label)) {
        (Ok(utf8), CharsetClass::SingleByte) => Some(utf8.to_owned()),
        // Some lines UTF-8, some not (one command of a cron job printed Latin-1): line by
        // line, the others through the declared charset (Windows-1252 for an ASCII label,
        // which those bytes cannot be).
        (Err(_), CharsetClass::SingleByte) if has_utf8_sequences(&bytes) => {
            let declared = label
                .map(|l| l.trim().trim_matches('"').to_ascii_lowercase())
                .filter(|l| !is_ascii_label(l))
                .and_then(|l| charset_decoder(l.as_bytes()));
            Some(decode_lines(&bytes, declared.unwrap_or(windows_1252)))
        }
        (Err(_), CharsetClass::Utf8OrUnknown) => {
            decode_legacy(&bytes).or_else(|| Some(decode_lines(&bytes, windows_1252)))
        }
        _ => None,
    }
}

/// Whether a charset label names ASCII (whose decoder cannot read 8-bit bytes).
fn is_ascii_label(label: &str) -> bool {
    let name = label.strip_prefix("x-").unwrap_or(label);
    ["us-ascii", "ascii", "ansi_x3.4", "iso646"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// What a declared charset says about how far its label can be trusted.
#[derive(Debug, PartialEq)]
enum CharsetClass {
    /// ASCII or a single-byte charset: bytes that are valid UTF-8 are UTF-8 mislabelled.
    SingleByte,
    /// UTF-8, none, or a name no decoder knows.
    Utf8OrUnknown,
    /// A multibyte or stateful charset, taken as declared.
    Other,
}

fn charset_class(label: Option<&str>) -> CharsetClass {
    const SINGLE_BYTE: &[&str] = &[
        "iso-8859",
        "iso8859",
        "iso_8859",
        "latin",
        "windows-125",
        "cp125",
        "koi8",
    ];
    let Some(label) = label else {
        return CharsetClass::Utf8OrUnknown;
    };
    let name = label.trim().trim_matches('"').to_ascii_lowercase();
    let name = name.strip_prefix("x-").unwrap_or(&name);
    if is_ascii_label(name) || SINGLE_BYTE.iter().any(|p| name.starts_with(p)) {
        CharsetClass::SingleByte
    } else if name == "utf-8" || name == "utf8" || charset_decoder(name.as_bytes()).is_none() {
        CharsetClass::Utf8OrUnknown
    } else {
        CharsetClass::Other
    }
}

/// A part's body with its transfer encoding undone but no charset applied; `None` when
/// it cannot be decoded (the parser's reading then stands).
fn transfer_decoded<'a>(msg: &'a Message<'_>, part: &MessagePart<'_>) -> Option<Cow<'a, [u8]>> {
    let raw = msg
        .raw_message
        .get(part.raw_body_offset() as usize..part.raw_end_offset() as usize)?;
    match part.encoding {
        Encoding::None => Some(Cow::Borrowed(raw)),
        Encoding::QuotedPrintable => quoted_printable_decode(raw).map(Cow::Owned),
        Encoding::Base64 => base64_decode(raw).map(Cow::Owned),
    }
}

/// Whether the part's Content-Transfer-Encoding header says base64 (mail-parser resets
/// `encoding` to None when decoding failed, so the header is what tells).
fn declared_base64(part: &MessagePart<'_>) -> bool {
    part.encoding == Encoding::Base64
        || part
            .content_transfer_encoding()
            .is_some_and(|e| e.trim().eq_ignore_ascii_case("base64"))
}

fn is_base64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

/// Decodes leniently-recovered bytes with the part's charset (lossy UTF-8 without one).
fn decode_repaired(part: &MessagePart<'_>, bytes: &[u8]) -> String {
    let decoder = part
        .content_type()
        .and_then(|ct| ct.attribute("charset"))
        .and_then(|cs| charset_decoder(cs.as_bytes()));
    match decoder {
        Some(decode) => decode(bytes),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Lists the message's attachments, inline non-text parts and nested messages (never their
/// content), skipping parts already shown as body; stops after `max` entries and returns
/// how many more there were. `input_cut` says the parsed bytes were only the start of the
/// message: a part running to their end is then marked as cut short.
pub fn attachments(
    msg: &Message<'_>,
    used: &HashSet<u32>,
    max: usize,
    input_cut: bool,
) -> (Vec<Attachment>, usize) {
    let mut shown = Vec::new();
    let mut more = 0usize;
    for &id in &msg.attachments {
        if used.contains(&id) {
            continue;
        }
        let Some(part) = msg.parts.get(id as usize) else {
            continue;
        };
        if matches!(part.body, PartType::Multipart(_)) {
            continue;
        }
        if shown.len() >= max {
            more += 1;
            continue;
        }
        let mut attachment = describe(part);
        attachment.cut_short = input_cut && part.raw_end_offset() as usize >= msg.raw_message.len();
        if part.is_encoding_problem && declared_base64(part) {
            // mail-parser kept the base64 text (usually because it was cut short); what
            // the reader wants is the size of the data it holds.
            let base64_chars = part
                .contents()
                .iter()
                .filter(|b| is_base64_char(**b))
                .count();
            attachment.size = base64_chars as u64 * 3 / 4;
        }
        shown.push(attachment);
    }
    (shown, more)
}

/// Name, type, decoded size and (for an attached message) its subject and sender.
fn describe(part: &MessagePart<'_>) -> Attachment {
    let declared = type_of(part);
    let nested_type = guard::original_message_type(&declared);
    let content_type = match (nested_type, declared.is_empty(), &part.body) {
        (Some(original), _, _) => original.to_string(),
        (None, false, _) => one_line(&declared, TYPE_MAX),
        (None, true, PartType::Message(_)) => "message/rfc822".to_string(),
        (None, true, PartType::Text(_)) => "text/plain".to_string(),
        (None, true, PartType::Html(_)) => "text/html".to_string(),
        (None, true, _) => "application/octet-stream".to_string(),
    };
    let name = part
        .attachment_name()
        .map(|n| one_line(n, NAME_MAX))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "(unnamed)".to_string());
    let detail = match &part.body {
        PartType::Message(nested) => nested_summary(nested),
        PartType::Binary(bytes) | PartType::InlineBinary(bytes) if nested_type.is_some() => {
            guard::nested_headers(bytes).and_then(|m| nested_summary(&m))
        }
        _ => None,
    };
    Attachment {
        name,
        content_type,
        size: part.len() as u64,
        cut_short: false,
        detail,
    }
}

/// `"Subject" from Sender` for a nested message, from its own headers.
fn nested_summary(nested: &Message<'_>) -> Option<String> {
    // Message accessors index parts[0]; a nested message without parts has no headers.
    if nested.parts.is_empty() {
        return None;
    }
    let subject = nested
        .subject()
        .map(|s| one_line(s, NESTED_SUBJECT_MAX))
        .filter(|s| !s.is_empty());
    let from = nested
        .from()
        .map(|a| super::headers::format_addresses(a, 1).0)
        .and_then(|mut v| v.pop());
    match (subject, from) {
        (Some(s), Some(f)) => Some(format!("\"{s}\" from {f}")),
        (Some(s), None) => Some(format!("\"{s}\"")),
        (None, Some(f)) => Some(format!("from {f}")),
        (None, None) => None,
    }
}
