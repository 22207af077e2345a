//! Text hygiene for the digest: whatever bytes a message held, what reaches the owner's phone
//! is clean, bounded plain text.
//!
//! Everything here is a pure function on strings: tidying decoded bodies (line ends, control
//! characters, blank-line runs, leftover base64), bounding them by characters, cleaning
//! single-line header values, lenient base64 for parts whose encoding was broken, and human
//! sizes.

/// Lines of base64 shorter than this are never taken for leftover attachment data: hashes,
/// tokens and words in ordinary text are shorter than a MIME base64 line (76).
const BASE64_LINE_MIN: usize = 60;

/// Tidies decoded text for reading: CRLF becomes `\n`; a lone CR works as on a terminal (a
/// progress bar redrawing its line leaves only what was written last), except in text with
/// no line feed at all, where CR is the line end (classic Mac OS); U+2028 and U+2029 end
/// lines too. Terminal escape sequences (colours, titles, cursor moves) and backspace
/// overstrikes are undone; other control characters than `\t`, and characters that are
/// invisible or disguise text (bidi controls, zero-width space, noncharacters), are removed;
/// runs of more than [`MAX_BLANK_RUN`] spaces or tabs inside a line are shortened; trailing
/// whitespace is trimmed from every line, runs of blank lines become one, leading and
/// trailing blank lines go, and runs of base64 lines (an attachment that leaked into the
/// text, e.g. through a broken boundary) become one `[… not shown]` line.
pub fn tidy(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank_run = 0usize;
    let mut base64_run = 0usize;
    let mut normalised = s.replace("\r\n", "\n");
    // One memchr-backed search per character; a set of characters goes char by char.
    if normalised.contains('\u{2028}') || normalised.contains('\u{2029}') {
        normalised = normalised.replace(['\u{2028}', '\u{2029}'], "\n");
    }
    let lines: Box<dyn Iterator<Item = &str>> = if normalised.contains('\n') {
        Box::new(normalised.split('\n').map(last_written))
    } else {
        Box::new(normalised.split('\r'))
    };
    for raw_line in lines {
        let line = clean_line(raw_line);
        let line = line.trim_end();
        if is_base64_line(line) {
            base64_run += 1;
            continue;
        }
        if base64_run > 0 {
            push_line(&mut out, &mut blank_run, &base64_note(base64_run));
            base64_run = 0;
        }
        push_line(&mut out, &mut blank_run, line);
    }
    if base64_run > 0 {
        push_line(&mut out, &mut blank_run, &base64_note(base64_run));
    }
    let end = out.trim_end().len();
    out.truncate(end);
    out
}

/// Longest run of spaces and tabs kept inside a line: enough for any column layout, not
/// enough for padding to push the rest of a message out of the digest.
pub const MAX_BLANK_RUN: usize = 40;

/// What a terminal would show of a line that carriage returns redrew: the last piece that
/// is not blank.
fn last_written(line: &str) -> &str {
    if !line.contains('\r') {
        return line;
    }
    line.rsplit('\r')
        .find(|piece| !piece.trim().is_empty())
        .unwrap_or("")
}

fn base64_note(lines: usize) -> String {
    let s = if lines == 1 { "" } else { "s" };
    format!("[… {lines} line{s} of base64 data not shown]")
}

/// Appends one line, keeping at most one blank line in a row and none at the start.
fn push_line(out: &mut String, blank_run: &mut usize, line: &str) {
    if line.is_empty() {
        *blank_run += 1;
        return;
    }
    if !out.is_empty() {
        out.push('\n');
        if *blank_run > 0 {
            out.push('\n');
        }
    }
    *blank_run = 0;
    out.push_str(line);
}

/// Makes one line readable: escape sequences and backspace overstrikes undone (see
/// [`without_escapes`]), unwanted characters removed, long blank runs shortened.
fn clean_line(line: &str) -> std::borrow::Cow<'_, str> {
    if is_plain(line) {
        return line.into();
    }
    let line = without_escapes(line);
    let mut out = String::with_capacity(line.len());
    let mut blanks = 0usize;
    for c in line.chars().filter(|&c| !unwanted(c)) {
        blanks = if c == ' ' || c == '\t' { blanks + 1 } else { 0 };
        if blanks <= MAX_BLANK_RUN {
            out.push(c);
        }
    }
    out.into()
}

/// Whether a line needs no cleaning (the common case, checked first): printable ASCII and
/// tabs, or other characters none of which is unwanted, and no long blank run.
fn is_plain(line: &str) -> bool {
    let mut blanks = 0usize;
    for &b in line.as_bytes() {
        if b == b' ' || b == b'\t' {
            blanks += 1;
            if blanks > MAX_BLANK_RUN {
                return false;
            }
            continue;
        }
        blanks = 0;
        if !(0x21..0x7f).contains(&b) {
            // Control bytes, DEL, or the start of a non-ASCII character: look closer.
            return b >= 0x80 && line.chars().all(|c| !unwanted(c)) && !long_blank_run(line);
        }
    }
    true
}

fn long_blank_run(line: &str) -> bool {
    let mut blanks = 0usize;
    line.bytes().any(|b| {
        blanks = if b == b' ' || b == b'\t' {
            blanks + 1
        } else {
            0
        };
        blanks > MAX_BLANK_RUN
    })
}

/// Characters a reader cannot see or that mislead: control characters (except tab), bidi
/// controls (overrides, isolates and marks), zero-width space, the byte order mark, and
/// noncharacters.
fn unwanted(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_control() && c != '\t';
    }
    (c.is_control() && c != '\t')
        || matches!(
            c,
            '\u{200b}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fdd0}'..='\u{fdef}'
        )
        || (c as u32) & 0xfffe == 0xfffe
}

/// What a terminal shows of text written for one: ECMA-48 escape sequences removed whole
/// (CSI such as colours `ESC [ 1;31m`, OSC such as window titles up to BEL or `ESC \\`,
/// character set selections such as `ESC ( B`, and the other two-character ones), and a
/// backspace erasing the character before it, so that overstrike (`N\bN`, `_\bx`, as in
/// formatted man pages) shows each character once. Other control characters are left for
/// the caller.
pub fn without_escapes(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\u{1b}', '\u{8}', '\u{9b}']) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{8}' => {
                out.pop();
            }
            '\u{9b}' => skip_csi(&mut chars),
            '\u{1b}' => match chars.next() {
                Some('[') => skip_csi(&mut chars),
                // OSC, DCS, SOS, PM, APC: a string up to BEL or ST (`ESC \\`).
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || c == '\u{9c}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                // Intermediate bytes, then one final byte (`ESC ( B`, `ESC # 8`).
                Some(' '..='/') => {
                    while chars.next_if(|c| matches!(c, ' '..='/')).is_some() {}
                    chars.next_if(|c| matches!(c, '0'..='~'));
                }
                // A two-character sequence (`ESC =`, `ESC M`, `ESC c`) or a lone ESC.
                _ => {}
            },
            _ => out.push(c),
        }
    }
    out.into()
}

/// Skips a control sequence's parameter and intermediate bytes and its final byte.
fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while chars
        .next_if(|c| matches!(c, '0'..='?' | ' '..='/'))
        .is_some()
    {}
    chars.next_if(|c| matches!(c, '@'..='~'));
}

/// Whether a line looks like part of a base64 body rather than text: long, no spaces, only
/// base64 characters, and mixed case (so that hex digests and shouted words do not count).
pub fn is_base64_line(line: &str) -> bool {
    let b = line.as_bytes();
    if b.len() < BASE64_LINE_MIN {
        return false;
    }
    let alphabet = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=');
    b.iter().all(alphabet)
        && b.iter().any(u8::is_ascii_lowercase)
        && b.iter().any(u8::is_ascii_uppercase)
}

/// Makes a header value one readable line of at most `max_chars` characters: whitespace runs
/// (folding included) become one space, control characters go, and a cut is marked `…`.
pub fn one_line(s: &str, max_chars: usize) -> String {
    let s = without_escapes(s);
    let mut out = String::with_capacity(s.len().min(max_chars * 4));
    let mut space = false;
    let mut count = 0usize;
    for c in s.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if unwanted(c) {
            continue;
        }
        let need = 1 + usize::from(space);
        if count + need > max_chars {
            out.push('…');
            return out;
        }
        if space {
            out.push(' ');
            count += 1;
            space = false;
        }
        out.push(c);
        count += 1;
    }
    out
}

/// Cuts `s` to at most `max_chars` characters (never inside a character); returns the kept
/// prefix and how many characters were cut.
pub fn cap_chars(s: &str, max_chars: usize) -> (&str, usize) {
    match s.char_indices().nth(max_chars) {
        None => (s, 0),
        Some((byte, _)) => (&s[..byte], s[byte..].chars().count()),
    }
}

/// Bounds a body to `max_chars` characters for reading. One that fits is kept whole; a
/// longer one keeps its first three quarters and its last quarter (the end of a log or a
/// script's output says how it ended), each cut at a line end when one falls in the second
/// half of its share, so no half line is shown. Returns the start, the end (empty when
/// nothing was cut or `max_chars` leaves no room for it) and how many characters were left
/// out between them.
pub fn cap_body(s: &str, max_chars: usize) -> (&str, &str, usize) {
    let total = s.chars().count();
    if total <= max_chars {
        return (s, "", 0);
    }
    let tail_share = max_chars / 4;
    let head_share = max_chars - tail_share;
    let (mut head, _) = cap_chars(s, head_share);
    if let Some(nl) = head.rfind('\n') {
        if head[..nl].chars().count() >= head_share / 2 {
            head = &head[..nl];
        }
    }
    let head = head.trim_end();
    let tail_start = s
        .char_indices()
        .nth(total - tail_share)
        .map_or(s.len(), |(i, _)| i);
    let mut tail = &s[tail_start..];
    if let Some(nl) = tail.find('\n') {
        if tail[..nl].chars().count() <= tail_share / 2 {
            tail = &tail[nl + 1..];
        }
    }
    let tail = tail.trim_start_matches('\n').trim_end();
    let cut = total - head.chars().count() - tail.chars().count();
    (head, tail, cut)
}

/// A size for people: `512 bytes`, `12.3 KiB`, `4.0 MiB`, `1.2 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        let s = if bytes == 1 { "" } else { "s" };
        return format!("{bytes} byte{s}");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Decodes bytes that are not UTF-8 and hold no UTF-8 sequence at all as Windows-1252 (the
/// superset of Latin-1 that undeclared 8-bit mail nearly always is); `None` for valid UTF-8
/// or for bytes that are partly UTF-8, where a lossy UTF-8 reading keeps more.
pub fn decode_legacy(bytes: &[u8]) -> Option<String> {
    if std::str::from_utf8(bytes).is_ok() {
        return None;
    }
    if has_utf8_sequences(bytes) {
        return None;
    }
    Some(windows_1252(bytes))
}

/// Whether `bytes` hold at least one valid UTF-8 sequence of more than one byte.
pub fn has_utf8_sequences(bytes: &[u8]) -> bool {
    String::from_utf8_lossy(bytes)
        .chars()
        .any(|c| !c.is_ascii() && c != '\u{fffd}')
}

/// Text in two encodings at once, line by line: cron mails the output of every command of a
/// job in one body, and one program may print UTF-8 while another prints Latin-1. Each line
/// that is valid UTF-8 is read as UTF-8, each line holding no UTF-8 sequence through
/// `legacy`, and a line of UTF-8 with a stray byte as UTF-8 with a replacement character.
pub fn decode_lines(bytes: &[u8], legacy: fn(&[u8]) -> String) -> String {
    let mut out = String::with_capacity(bytes.len() + bytes.len() / 8);
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        match std::str::from_utf8(line) {
            Ok(text) => out.push_str(text),
            Err(_) if has_utf8_sequences(line) => out.push_str(&String::from_utf8_lossy(line)),
            Err(_) => out.push_str(&legacy(line)),
        }
    }
    out
}

/// Windows-1252, the superset of Latin-1 that unlabelled 8-bit text nearly always is.
pub fn windows_1252(bytes: &[u8]) -> String {
    match mail_parser::decoders::charsets::map::charset_decoder(b"windows-1252") {
        Some(decode) => decode(bytes),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Text of unknown charset: UTF-8 when it is, Windows-1252 when it holds no UTF-8 at all
/// ([`decode_legacy`]), else UTF-8 with replacement characters.
pub fn decode_guessing(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match decode_legacy(bytes) {
        Some(text) => text.into(),
        None => String::from_utf8_lossy(bytes),
    }
}

/// Decodes base64 leniently, for parts whose base64 the parser rejected (usually because the
/// message was cut short): characters outside the alphabet are skipped, decoding stops at
/// padding, and a trailing partial group yields the whole bytes it holds.
pub fn lenient_base64(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &c in input {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidy_cases() {
        let long_b64 =
            "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0";
        let cases: &[(&str, String, &str)] = &[
            ("crlf", "a\r\nb\r\nc".into(), "a\nb\nc"),
            ("lone cr redraws the line", "a\r\n 10%\r 50%\r100%\r\nb".into(), "a\n100%\nb"),
            ("cr then blank keeps what was written", "done\r   \nb".into(), "done\nb"),
            ("cr alone ends lines (no lf at all)", "a\rb\rc".into(), "a\nb\nc"),
            ("unicode line separators", "a\u{2028}b\u{2029}c".into(), "a\nb\nc"),
            ("trailing space", "a  \t\nb ".into(), "a\nb"),
            ("blank runs", "a\n\n\n\n\nb".into(), "a\n\nb"),
            (
                "whitespace-only lines are blank",
                "a\n \n\t\n  \nb".into(),
                "a\n\nb",
            ),
            ("leading and trailing blanks", "\n\n a\n\n".into(), " a"),
            (
                "controls stripped",
                "a\u{0}b\u{7}c\u{1b}[31md\u{85}e".into(),
                "abcde",
            ),
            (
                "terminal escapes removed whole",
                "\u{1b}[1;31mERROR\u{1b}[0m \u{1b}]0;title\u{7}x\u{1b}]2;t\u{1b}\\y\u{1b}(Bz\u{1b}[2K\u{1b}=w\u{9b}1mv".into(),
                "ERROR xyzwv",
            ),
            ("escape cut at the line end", "a\u{1b}[31".into(), "a"),
            ("overstrike", "N\u{8}NA\u{8}AM\u{8}ME\u{8}E _\u{8}u".into(), "NAME u"),
            ("backspace at the start", "\u{8}a".into(), "a"),
            (
                "invisible characters removed",
                "a\u{200b}b\u{200e}c\u{200f}d\u{61c}e\u{ffff}f\u{10ffff}g\u{fdd0}h".into(),
                "abcdefgh",
            ),
            ("joiners kept", "👩\u{200d}💻 \u{200c}".into(), "👩\u{200d}💻 \u{200c}"),
            (
                "long blank runs shortened",
                format!("a{}b\t{}c", " ".repeat(5000), "\t".repeat(41)),
                format!("a{}b\t{}c", " ".repeat(MAX_BLANK_RUN), "\t".repeat(MAX_BLANK_RUN - 1)).leak(),
            ),
            ("tab kept", "a\tb".into(), "a\tb"),
            ("bidi override stripped", "abc\u{202e}fed".into(), "abcfed"),
            ("bom stripped", "\u{feff}hello".into(), "hello"),
            (
                "base64 run collapsed",
                format!("see:\n{long_b64}\n{long_b64}\nbye"),
                "see:\n[… 2 lines of base64 data not shown]\nbye",
            ),
            (
                "base64 at end",
                format!("x\n{long_b64}"),
                "x\n[… 1 line of base64 data not shown]",
            ),
            (
                "hex digest kept",
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
            ("empty", "".into(), ""),
            ("only blanks", "\n\r\n \n".into(), ""),
        ];
        for (what, input, want) in cases {
            assert_eq!(tidy(input), *want, "{what}");
        }
    }

    #[test]
    fn one_line_cases() {
        let cases: &[(&str, usize, &str)] = &[
            ("\u{1b}[31mred\u{1b}[0m alert", 100, "red alert"),
            ("a\r\n b", 100, "a b"),
            ("  lead  and trail  ", 100, "lead and trail"),
            ("abcdef", 3, "abc…"),
            ("ab cd", 3, "ab…"),
            ("ééééé", 2, "éé…"),
            ("x\u{0}y", 10, "xy"),
            ("", 10, ""),
        ];
        for (input, max, want) in cases {
            assert_eq!(one_line(input, *max), *want, "{input:?} max {max}");
        }
    }

    #[test]
    fn cap_chars_cases() {
        let cases: &[(&str, usize, &str, usize)] = &[
            ("hello", 10, "hello", 0),
            ("hello", 5, "hello", 0),
            ("hello", 2, "he", 3),
            ("héllo wörld", 4, "héll", 7),
            ("😀😀😀", 1, "😀", 2),
            ("abc", 0, "", 3),
            ("", 0, "", 0),
        ];
        for (input, max, kept, cut) in cases {
            assert_eq!(cap_chars(input, *max), (*kept, *cut), "{input:?} max {max}");
        }
    }

    #[test]
    fn cap_body_cases() {
        let lines: String = (0..100).map(|i| format!("line {i:03}\n")).collect();
        let (head, tail, cut) = cap_body(&lines, 100);
        assert!(
            head.starts_with("line 000\n") && head.ends_with("line 007"),
            "{head:?}"
        );
        assert!(
            tail.starts_with("line 098") && tail.ends_with("line 099"),
            "{tail:?}"
        );
        assert_eq!(
            head.chars().count() + tail.chars().count() + cut,
            lines.chars().count()
        );
        assert!(head.chars().count() + tail.chars().count() <= 100);

        let one_line = "é".repeat(1000);
        let (head, tail, cut) = cap_body(&one_line, 100);
        assert_eq!(
            (head.chars().count(), tail.chars().count(), cut),
            (75, 25, 900)
        );

        assert_eq!(cap_body("short", 100), ("short", "", 0));
        assert_eq!(cap_body("abc", 0), ("", "", 3));
        assert_eq!(cap_body("abcdef", 3), ("abc", "", 3));
        // A blank line at the cut leaves no blank line before the note.
        let (head, _, _) = cap_body("aaaa\n\n\nbbbbbbbbbbbbbbbbbbbbbbbbb", 8);
        assert_eq!(head, "aaaa");
    }

    #[test]
    fn human_sizes() {
        let cases: &[(u64, &str)] = &[
            (0, "0 bytes"),
            (1, "1 byte"),
            (1023, "1023 bytes"),
            (1024, "1.0 KiB"),
            (12_595, "12.3 KiB"),
            (5 << 20, "5.0 MiB"),
            (3 << 30, "3.0 GiB"),
            (u64::MAX, "16777216.0 TiB"),
        ];
        for (bytes, want) in cases {
            assert_eq!(human_size(*bytes), *want, "{bytes}");
        }
    }

    #[test]
    fn legacy_decoding() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"Gr\xfc\xdfe \x80 5", Some("Grüße € 5")),
            (b"plain ascii", None),
            ("schon UTF-8: ä".as_bytes(), None),
            (b"mixed \xc3\xa4 and \xfc", None),
        ];
        for (input, want) in cases {
            assert_eq!(decode_legacy(input).as_deref(), *want, "{input:?}");
        }
    }

    #[test]
    fn lenient_base64_cases() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"aGVsbG8=", b"hello"),
            (b"aGVs\r\nbG8gd29y\nbGQ=", b"hello world"),
            (b"aGVsbG8gd29", b"hello wo"),
            (b"aGV*sbG8", b"hello"),
            (b"", b""),
            (b"=", b""),
        ];
        for (input, want) in cases {
            assert_eq!(
                lenient_base64(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
