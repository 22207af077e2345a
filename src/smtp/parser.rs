//! Parses one SMTP command line (RFC 5321 §4.1, RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 3030
//! CHUNKING, RFC 6531 SMTPUTF8) into a [`Command`], or the one [`ParseError`] that names its
//! reply. It knows nothing of the session: whether a command is allowed *now* is `super`'s
//! check.
//!
//! Leniency follows Postfix's defaults for local clients: `MAIL FROM: <x>` (space after the
//! colon), unbracketed paths such as `MAIL FROM:root`, verbs in any case, trailing blanks,
//! and source routes (`<@a,@b:u@d>`, RFC 5321 Appendix C) silently dropped.
//!
//! Addresses: control bytes (NUL, CR, TAB, …), unquoted spaces or angle brackets, unbalanced
//! quotes and **invalid UTF-8** are refused (`501 5.1.7` / `501 5.1.3`); valid UTF-8 is
//! accepted with or without the SMTPUTF8 parameter. Refusing invalid UTF-8 rather than
//! replacing it keeps the envelope that reaches the chat identical to what the client sent.

use std::fmt;

use super::reply;

/// The `BODY=` parameter of MAIL (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Body {
    /// No BODY parameter, or `BODY=7BIT`.
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
    /// `BODY=BINARYMIME`: the message may only be sent with BDAT.
    BinaryMime,
}

/// The parameters of MAIL that mean something to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct MailParams {
    /// `SIZE=` (RFC 1870), saturated at `u64::MAX` so that any huge number is "too big".
    pub(crate) size: Option<u64>,
    /// `BODY=`.
    pub(crate) body: Body,
    /// `SMTPUTF8` was given.
    pub(crate) smtputf8: bool,
}

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// `HELO name` (`extended: false`) or `EHLO name` (`extended: true`).
    Hello {
        /// The client's name, lossily decoded: it is informational only.
        name: String,
        /// EHLO rather than HELO.
        extended: bool,
    },
    /// `MAIL FROM:<sender> [params]`; the null sender is the empty string.
    Mail {
        /// The reverse path without brackets or source route.
        sender: String,
        /// Its parameters.
        params: MailParams,
    },
    /// `RCPT TO:<recipient> [params]`; the parameters are checked for syntax, then ignored.
    Rcpt {
        /// The forward path without brackets or source route.
        recipient: String,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// The exact number of octets that follow the command line.
        size: u64,
        /// `LAST` was given.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT [anything]`: like Postfix, any argument is ignored.
    Quit,
    /// `VRFY string`.
    Vrfy,
    /// `EXPN [string]`.
    Expn,
    /// `HELP [string]`.
    Help,
    /// `STARTTLS`.
    StartTls,
    /// `AUTH ...`; its arguments are never looked at (nor logged).
    Auth,
    /// Not SMTP at all, answered and closed at once, as Postfix's
    /// `smtpd_forbidden_commands` and its header check do: what follows (an HTTP request's
    /// body, the rest of a message whose DATA was refused) may hold SMTP commands that
    /// nobody meant as commands.
    Forbidden(NonSmtp),
}

/// What kind of non-SMTP line ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonSmtp {
    /// `GET`, `POST`, `CONNECT`: an HTTP request sent to the SMTP port (a browser, or a
    /// server-side request forgery smuggling SMTP commands in its body).
    Http,
    /// A message header line such as `Subject: x`: a client that pipelined its message
    /// after a refused DATA, whose body lines would otherwise be read as commands.
    Header,
    /// A line starting with anything but a letter (`<html>`, `123 x`, 8-bit bytes).
    Bogus,
}

impl NonSmtp {
    /// For the log line.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            NonSmtp::Http => "HTTP request",
            NonSmtp::Header => "message header line",
            NonSmtp::Bogus => "line not starting with a letter",
        }
    }
}

/// Why a command line could not be parsed; each variant has exactly one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum ParseError {
    /// Occurs when the line is blank or starts with NUL, or its verb, starting with a
    /// letter, holds anything but letters, digits and `-` (a line starting with anything
    /// else is [`Command::Forbidden`]).
    Garbage,
    /// Occurs when the verb is well-formed but not one we know.
    Unrecognized,
    /// Occurs when HELO (`extended: false`) or EHLO has no name, or one with control bytes.
    HelloSyntax {
        /// EHLO rather than HELO.
        extended: bool,
    },
    /// Occurs when MAIL lacks `FROM:` or a path.
    MailSyntax,
    /// Occurs when RCPT lacks `TO:` or a path.
    RcptSyntax,
    /// Occurs when the reverse path is malformed.
    BadSender,
    /// Occurs when the forward path is malformed or `<>`.
    BadRecipient,
    /// Occurs when DATA is given an argument.
    DataSyntax,
    /// Occurs when RSET is given an argument.
    RsetSyntax,
    /// Occurs when BDAT's size is missing or not a number that fits 64 bits, or is followed by
    /// anything but `LAST`.
    BdatSyntax,
    /// Occurs when VRFY has no argument.
    VrfySyntax,
    /// Occurs when a MAIL or RCPT parameter is not `keyword[=value]`.
    BadParameter,
    /// Occurs when `SIZE=` is not a decimal number.
    BadSize,
    /// Occurs when `BODY=` is not 7BIT, 8BITMIME or BINARYMIME.
    BadBody,
    /// Occurs when MAIL or RCPT carries a well-formed parameter we do not support.
    UnsupportedParameter,
}

impl ParseError {
    /// The reply line for this error.
    pub(crate) fn reply(self) -> &'static str {
        match self {
            ParseError::Garbage => reply::BAD_SYNTAX,
            ParseError::Unrecognized => reply::UNRECOGNIZED,
            ParseError::HelloSyntax { extended: false } => reply::SYNTAX_HELO,
            ParseError::HelloSyntax { extended: true } => reply::SYNTAX_EHLO,
            ParseError::MailSyntax => reply::SYNTAX_MAIL,
            ParseError::RcptSyntax => reply::SYNTAX_RCPT,
            ParseError::BadSender => reply::BAD_SENDER,
            ParseError::BadRecipient => reply::BAD_RECIPIENT,
            ParseError::DataSyntax => reply::SYNTAX_DATA,
            ParseError::RsetSyntax => reply::SYNTAX_RSET,
            ParseError::BdatSyntax => reply::SYNTAX_BDAT,
            ParseError::VrfySyntax => reply::SYNTAX_VRFY,
            ParseError::BadParameter => reply::BAD_PARAMETER,
            ParseError::BadSize => reply::BAD_SIZE,
            ParseError::BadBody => reply::BAD_BODY,
            ParseError::UnsupportedParameter => reply::UNSUPPORTED_PARAMETER,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ParseError::Garbage => "line is not a command",
            ParseError::Unrecognized => "unknown command",
            ParseError::HelloSyntax { .. } => "missing or bad hostname",
            ParseError::MailSyntax => "malformed MAIL command",
            ParseError::RcptSyntax => "malformed RCPT command",
            ParseError::BadSender => "malformed sender address",
            ParseError::BadRecipient => "malformed recipient address",
            ParseError::DataSyntax => "DATA takes no argument",
            ParseError::RsetSyntax => "RSET takes no argument",
            ParseError::BdatSyntax => "malformed BDAT command",
            ParseError::VrfySyntax => "VRFY needs an argument",
            ParseError::BadParameter => "malformed parameter",
            ParseError::BadSize => "malformed SIZE parameter",
            ParseError::BadBody => "unknown BODY type",
            ParseError::UnsupportedParameter => "unsupported parameter",
        };
        f.write_str(text)
    }
}

impl std::error::Error for ParseError {}

/// Parses one command line, its line end already removed (a trailing CR is tolerated).
pub(crate) fn parse(line: &[u8]) -> Result<Command, ParseError> {
    // Blanks and stray carriage returns around the command are skipped, as Postfix's
    // tokenizer skips them.
    let around = |b: &u8| is_blank(*b) || *b == b'\r';
    let start = line.iter().position(|b| !around(b)).unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !around(b))
        .map_or(start, |e| e + 1);
    let line = &line[start..end];
    let (verb, args) = match line.iter().position(|&b| is_blank(b)) {
        Some(at) => (&line[..at], trim_start(&line[at..])),
        None => (line, &line[line.len()..]),
    };
    // A leading NUL ends the line for Postfix's C strings: an empty command, bad syntax.
    let Some(&first) = verb.first().filter(|&&b| b != 0) else {
        return Err(ParseError::Garbage);
    };
    if !first.is_ascii_alphabetic() {
        return Ok(Command::Forbidden(NonSmtp::Bogus));
    }
    if is_header_name(verb) {
        return Ok(Command::Forbidden(NonSmtp::Header));
    }
    if !verb.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ParseError::Garbage);
    }
    let mut upper = [0u8; 8];
    if verb.len() > upper.len() {
        return Err(ParseError::Unrecognized);
    }
    let upper = &mut upper[..verb.len()];
    upper.copy_from_slice(verb);
    upper.make_ascii_uppercase();
    match &*upper {
        b"HELO" => hello(args, false),
        b"EHLO" => hello(args, true),
        b"MAIL" => mail(args),
        b"RCPT" => rcpt(args),
        b"DATA" => no_argument(args, Command::Data, ParseError::DataSyntax),
        b"BDAT" => bdat(args),
        b"RSET" => no_argument(args, Command::Rset, ParseError::RsetSyntax),
        b"QUIT" => Ok(Command::Quit),
        b"NOOP" => Ok(Command::Noop),
        b"VRFY" if args.is_empty() => Err(ParseError::VrfySyntax),
        b"VRFY" => Ok(Command::Vrfy),
        b"EXPN" => Ok(Command::Expn),
        b"HELP" => Ok(Command::Help),
        b"STARTTLS" => Ok(Command::StartTls),
        b"AUTH" => Ok(Command::Auth),
        b"GET" | b"POST" | b"CONNECT" => Ok(Command::Forbidden(NonSmtp::Http)),
        _ => Err(ParseError::Unrecognized),
    }
}

/// Whether `word` starts like a message header line: a field name of printable characters,
/// then a colon (Postfix's `is_header`). No SMTP verb contains a colon.
fn is_header_name(word: &[u8]) -> bool {
    match word.iter().position(|&b| b == b':') {
        Some(colon) => colon > 0 && word[..colon].iter().all(|&b| b.is_ascii_graphic()),
        None => false,
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_start(s: &[u8]) -> &[u8] {
    let skip = s.iter().take_while(|&&b| is_blank(b)).count();
    &s[skip..]
}

fn trim_end(s: &[u8]) -> &[u8] {
    let keep = s.len() - s.iter().rev().take_while(|&&b| is_blank(b)).count();
    &s[..keep]
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn no_argument(args: &[u8], command: Command, error: ParseError) -> Result<Command, ParseError> {
    if args.is_empty() {
        Ok(command)
    } else {
        Err(error)
    }
}

fn hello(args: &[u8], extended: bool) -> Result<Command, ParseError> {
    // TAB is the only control byte `trim_*` leaves possible inside; refuse all of them so the
    // name can go into a log line or a digest verbatim.
    if args.is_empty() || args.iter().any(|&b| is_control(b)) {
        return Err(ParseError::HelloSyntax { extended });
    }
    Ok(Command::Hello {
        name: String::from_utf8_lossy(args).into_owned(),
        extended,
    })
}

/// Strips a case-insensitive keyword such as `FROM:` and the blanks after it.
fn keyword<'l>(args: &'l [u8], word: &[u8]) -> Option<&'l [u8]> {
    let head = args.get(..word.len())?;
    head.eq_ignore_ascii_case(word)
        .then(|| trim_start(&args[word.len()..]))
}

fn mail(args: &[u8]) -> Result<Command, ParseError> {
    let rest = keyword(args, b"FROM:").ok_or(ParseError::MailSyntax)?;
    let (path, params) = split_path(rest).map_err(|e| match e {
        PathError::Missing => ParseError::MailSyntax,
        PathError::Malformed => ParseError::BadSender,
    })?;
    let sender = address(path, true).ok_or(ParseError::BadSender)?;
    let mut parsed = MailParams::default();
    for (key, value) in parameters(params)? {
        if key.eq_ignore_ascii_case(b"SIZE") {
            let value = value.ok_or(ParseError::BadSize)?;
            if !value.iter().all(u8::is_ascii_digit) {
                return Err(ParseError::BadSize);
            }
            let size = value.iter().fold(0u64, |n, &d| {
                n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            });
            parsed.size = Some(size);
        } else if key.eq_ignore_ascii_case(b"BODY") {
            let value = value.ok_or(ParseError::BadBody)?;
            parsed.body = if value.eq_ignore_ascii_case(b"7BIT") {
                Body::SevenBit
            } else if value.eq_ignore_ascii_case(b"8BITMIME") {
                Body::EightBitMime
            } else if value.eq_ignore_ascii_case(b"BINARYMIME") {
                Body::BinaryMime
            } else {
                return Err(ParseError::BadBody);
            };
        } else if key.eq_ignore_ascii_case(b"SMTPUTF8") {
            if value.is_some() {
                return Err(ParseError::BadParameter);
            }
            parsed.smtputf8 = true;
        } else if !ignored_mail_parameter(key, value)? {
            return Err(ParseError::UnsupportedParameter);
        }
    }
    Ok(Command::Mail {
        sender,
        params: parsed,
    })
}

fn rcpt(args: &[u8]) -> Result<Command, ParseError> {
    let rest = keyword(args, b"TO:").ok_or(ParseError::RcptSyntax)?;
    let (path, params) = split_path(rest).map_err(|e| match e {
        PathError::Missing => ParseError::RcptSyntax,
        PathError::Malformed => ParseError::BadRecipient,
    })?;
    let recipient = address(path, false).ok_or(ParseError::BadRecipient)?;
    // We offer no RCPT extension; DSN's NOTIFY= and ORCPT= are checked, then ignored (see
    // `ignored_mail_parameter`). Any other parameter gets 555 (RFC 5321 §4.1.1.11).
    for (key, value) in parameters(params)? {
        let known = if key.eq_ignore_ascii_case(b"NOTIFY") {
            value.is_some_and(is_dsn_notify)
        } else if key.eq_ignore_ascii_case(b"ORCPT") {
            value.is_some_and(is_dsn_orcpt)
        } else {
            return Err(ParseError::UnsupportedParameter);
        };
        if !known {
            return Err(ParseError::BadParameter);
        }
    }
    Ok(Command::Rcpt { recipient })
}

/// The MAIL parameters of extensions we do not offer that are still taken and ignored:
/// `Ok(true)` for a well-formed one, `Err` (501) for a malformed one, `Ok(false)` for any
/// other keyword (555).
///
/// DSN's `RET=` and `ENVID=` (and `NOTIFY=`/`ORCPT=` on RCPT): Postfix advertises DSN and
/// takes them, and callers pass them whatever the EHLO said (`smtplib.sendmail(...,
/// mail_options=["RET=HDRS"])`, Java Mail's `mail.smtp.dsn.ret`); refusing them would lose
/// the message. We do not advertise DSN, since no status notification is ever sent: ignoring
/// the request is what a server that never bounces can honestly do. `AUTH=` (RFC 4954 §5)
/// names the submitter for a relay and is ignored by a server without AUTH.
fn ignored_mail_parameter(key: &[u8], value: Option<&[u8]>) -> Result<bool, ParseError> {
    let ok = if key.eq_ignore_ascii_case(b"RET") {
        value.is_some_and(|v| v.eq_ignore_ascii_case(b"FULL") || v.eq_ignore_ascii_case(b"HDRS"))
    } else if key.eq_ignore_ascii_case(b"ENVID") {
        // RFC 3461 §4.4: at most 100 characters of xtext.
        value.is_some_and(|v| v.len() <= 100 && is_xtext(v))
    } else if key.eq_ignore_ascii_case(b"AUTH") {
        value.is_some_and(is_xtext) // `<>` (none) is xtext too
    } else {
        return Ok(false);
    };
    if ok {
        Ok(true)
    } else {
        Err(ParseError::BadParameter)
    }
}

/// RFC 3461 §4.1: `NEVER`, or a comma-separated list of `SUCCESS`, `FAILURE`, `DELAY`.
fn is_dsn_notify(value: &[u8]) -> bool {
    if value.eq_ignore_ascii_case(b"NEVER") {
        return true;
    }
    value.split(|&b| b == b',').all(|word| {
        [&b"SUCCESS"[..], b"FAILURE", b"DELAY"]
            .iter()
            .any(|known| word.eq_ignore_ascii_case(known))
    })
}

/// RFC 3461 §4.2: `addr-type ";" xtext`, the type an atom such as `rfc822`.
fn is_dsn_orcpt(value: &[u8]) -> bool {
    match value.iter().position(|&b| b == b';') {
        Some(semi) => {
            let (kind, address) = (&value[..semi], &value[semi + 1..]);
            !kind.is_empty()
                && kind.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-')
                && !address.is_empty()
                && is_xtext(address)
        }
        None => false,
    }
}

/// RFC 3461 §4: printable ASCII but `+` and `=`, with `+XX` (two hex digits; upper case in
/// the RFC, either case for Postfix's decoder, and for us) standing for any byte. Values are
/// UTF-8 under SMTPUTF8 (RFC 6533 "utf-8-addr-xtext"), so non-ASCII bytes are taken as they
/// come.
fn is_xtext(value: &[u8]) -> bool {
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'+' => {
                let hex = |b: Option<&u8>| b.is_some_and(u8::is_ascii_hexdigit);
                if !(hex(value.get(i + 1)) && hex(value.get(i + 2))) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            b if b >= 0x80 || b.is_ascii_graphic() => i += 1,
            _ => return false,
        }
    }
    true
}

fn bdat(args: &[u8]) -> Result<Command, ParseError> {
    let mut words = args.split(|&b| is_blank(b)).filter(|w| !w.is_empty());
    let size = words.next().ok_or(ParseError::BdatSyntax)?;
    if !size.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::BdatSyntax);
    }
    // Unlike SIZE=, the chunk size must be exact: a number we cannot represent is an error,
    // never a saturated guess, or we would lose track of where the data ends.
    let size = size
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(ParseError::BdatSyntax)?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(ParseError::BdatSyntax),
    };
    if words.next().is_some() {
        return Err(ParseError::BdatSyntax);
    }
    Ok(Command::Bdat { size, last })
}

/// Why a path could not be separated from its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathError {
    /// Nothing after `FROM:` / `TO:`.
    Missing,
    /// Unterminated brackets, or junk glued to the closing bracket.
    Malformed,
}

/// Splits `<path> params` (or the lenient bare `path params`) into the path's inside and the
/// parameter text.
fn split_path(rest: &[u8]) -> Result<(&[u8], &[u8]), PathError> {
    if rest.is_empty() {
        return Err(PathError::Missing);
    }
    if rest[0] != b'<' {
        // Bare address (Postfix, strict_rfc821_envelopes=no): up to the first blank.
        let end = rest.iter().position(|&b| is_blank(b)).unwrap_or(rest.len());
        let path = &rest[..end];
        if path.contains(&b'>') {
            return Err(PathError::Malformed);
        }
        return Ok((path, &rest[end..]));
    }
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in rest.iter().enumerate().skip(1) {
        if escaped {
            escaped = false;
        } else if quoted {
            match b {
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => quoted = true,
                b'>' => {
                    let after = &rest[i + 1..];
                    if !after.is_empty() && !is_blank(after[0]) {
                        return Err(PathError::Malformed);
                    }
                    return Ok((&rest[1..i], after));
                }
                _ => {}
            }
        }
    }
    Err(PathError::Malformed)
}

/// Validates the inside of a path and returns the address; `<>` is allowed only as the
/// sender (the null reverse path).
fn address(path: &[u8], null_allowed: bool) -> Option<String> {
    let path = trim_end(trim_start(path));
    if path.is_empty() {
        return null_allowed.then(String::new);
    }
    // A source route `@a,@b:` (obsolete; RFC 5321 Appendix C) must be accepted and ignored.
    let path = if path[0] == b'@' {
        let colon = path.iter().position(|&b| b == b':')?;
        &path[colon + 1..]
    } else {
        path
    };
    if path.is_empty() {
        return None;
    }
    let mut quoted = false;
    let mut escaped = false;
    for &b in path {
        if is_control(b) {
            return None;
        }
        if escaped {
            escaped = false;
        } else if quoted {
            match b {
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => quoted = true,
                b' ' | b'<' | b'>' => return None,
                _ => {}
            }
        }
    }
    if quoted || escaped {
        return None;
    }
    String::from_utf8(path.to_vec()).ok()
}

/// One `keyword[=value]` parameter.
type Parameter<'l> = (&'l [u8], Option<&'l [u8]>);

/// Splits and checks ESMTP parameters (RFC 5321 §4.1.2 `esmtp-param`; values may be UTF-8
/// per RFC 6531).
fn parameters(text: &[u8]) -> Result<Vec<Parameter<'_>>, ParseError> {
    text.split(|&b| is_blank(b))
        .filter(|word| !word.is_empty())
        .map(|word| {
            let (key, value) = match word.iter().position(|&b| b == b'=') {
                Some(eq) => (&word[..eq], Some(&word[eq + 1..])),
                None => (word, None),
            };
            let key_ok = key.first().is_some_and(u8::is_ascii_alphanumeric)
                && key.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
            let value_ok = value.is_none_or(|v| {
                !v.is_empty()
                    && v.iter()
                        .all(|&b| (33..=126).contains(&b) && b != b'=' || b >= 0x80)
            });
            if key_ok && value_ok {
                Ok((key, value))
            } else {
                Err(ParseError::BadParameter)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail_cmd(sender: &str, params: MailParams) -> Result<Command, ParseError> {
        Ok(Command::Mail {
            sender: sender.to_string(),
            params,
        })
    }

    fn rcpt_cmd(recipient: &str) -> Result<Command, ParseError> {
        Ok(Command::Rcpt {
            recipient: recipient.to_string(),
        })
    }

    fn hello_cmd(name: &str, extended: bool) -> Result<Command, ParseError> {
        Ok(Command::Hello {
            name: name.to_string(),
            extended,
        })
    }

    const NONE: MailParams = MailParams {
        size: None,
        body: Body::SevenBit,
        smtputf8: false,
    };

    #[test]
    fn command_table() {
        let table: &[(&[u8], Result<Command, ParseError>)] = &[
            // verbs, case, blanks
            (b"HELO client.example", hello_cmd("client.example", false)),
            (b"helo client\r", hello_cmd("client", false)),
            (b"EHLO [127.0.0.1]", hello_cmd("[127.0.0.1]", true)),
            (b"ehlo  spaced name \t ", hello_cmd("spaced name", true)),
            (b"HELO", Err(ParseError::HelloSyntax { extended: false })),
            (b"EHLO   ", Err(ParseError::HelloSyntax { extended: true })),
            (
                b"EHLO a\x00b",
                Err(ParseError::HelloSyntax { extended: true }),
            ),
            (b"EHLO h\xffst", hello_cmd("h\u{fffd}st", true)),
            (b"DATA", Ok(Command::Data)),
            (b"data \r", Ok(Command::Data)),
            (b"DATA now", Err(ParseError::DataSyntax)),
            (b"RSET", Ok(Command::Rset)),
            (b"RSET x", Err(ParseError::RsetSyntax)),
            (b"QUIT", Ok(Command::Quit)),
            (b"QUIT now", Ok(Command::Quit)),
            (b" NOOP", Ok(Command::Noop)),
            (b"\tNOOP\r", Ok(Command::Noop)),
            (b"\rQUIT", Ok(Command::Quit)),
            (b"\r\r", Err(ParseError::Garbage)),
            (b"GET / HTTP/1.1", Ok(Command::Forbidden(NonSmtp::Http))),
            (b"post /x HTTP/1.0", Ok(Command::Forbidden(NonSmtp::Http))),
            (
                b"CONNECT 127.0.0.1:25 HTTP/1.1",
                Ok(Command::Forbidden(NonSmtp::Http)),
            ),
            // A message pipelined after a refused DATA, read as commands: closed, as Postfix.
            (
                b"Subject: disk full",
                Ok(Command::Forbidden(NonSmtp::Header)),
            ),
            (b"From:<a@b>", Ok(Command::Forbidden(NonSmtp::Header))),
            (
                b"X-Cron-Env: <HOME=/root>",
                Ok(Command::Forbidden(NonSmtp::Header)),
            ),
            (b"<html>", Ok(Command::Forbidden(NonSmtp::Bogus))),
            (b"123 hello", Ok(Command::Forbidden(NonSmtp::Bogus))),
            (b"-- ", Ok(Command::Forbidden(NonSmtp::Bogus))),
            (b"\x01\x02", Ok(Command::Forbidden(NonSmtp::Bogus))),
            (b"\x00QUIT", Err(ParseError::Garbage)),
            (b"\xc3\xa9HLO x", Ok(Command::Forbidden(NonSmtp::Bogus))),
            (b"NOOP", Ok(Command::Noop)),
            (b"NOOP anything goes", Ok(Command::Noop)),
            (b"VRFY root", Ok(Command::Vrfy)),
            (b"VRFY", Err(ParseError::VrfySyntax)),
            (b"EXPN staff", Ok(Command::Expn)),
            (b"HELP", Ok(Command::Help)),
            (b"HELP MAIL", Ok(Command::Help)),
            (b"STARTTLS", Ok(Command::StartTls)),
            (b"AUTH PLAIN AGZvbwBiYXI=", Ok(Command::Auth)),
            (b"XCLIENT NAME=x", Err(ParseError::Unrecognized)),
            (b"TURN", Err(ParseError::Unrecognized)),
            (b"VERYLONGVERB", Err(ParseError::Unrecognized)),
            // garbage
            (b"", Err(ParseError::Garbage)),
            (b"\r", Err(ParseError::Garbage)),
            (b"   ", Err(ParseError::Garbage)),
            (
                b" HELO x",
                Ok(Command::Hello {
                    name: "x".into(),
                    extended: false,
                }),
            ),
            (b"NO\x01OP", Err(ParseError::Garbage)),
            (b"HEL\xc3\xa9 x", Err(ParseError::Garbage)),
            (b"MAIL:FROM:<a>", Ok(Command::Forbidden(NonSmtp::Header))),
            // MAIL
            (b"MAIL FROM:<a@b.example>", mail_cmd("a@b.example", NONE)),
            (b"mail from:<a@b.example>", mail_cmd("a@b.example", NONE)),
            (b"MAIL FROM: <a@b.example>", mail_cmd("a@b.example", NONE)),
            (b"MAIL FROM:<>", mail_cmd("", NONE)),
            (b"MAIL FROM:< >", mail_cmd("", NONE)),
            (b"MAIL FROM:root", mail_cmd("root", NONE)),
            (b"MAIL FROM:<root>", mail_cmd("root", NONE)),
            (
                b"MAIL FROM:root SIZE=10",
                mail_cmd(
                    "root",
                    MailParams {
                        size: Some(10),
                        ..NONE
                    },
                ),
            ),
            (
                b"MAIL FROM:<@relay.example,@r2:u@d.example>",
                mail_cmd("u@d.example", NONE),
            ),
            (
                b"MAIL FROM:<\"john doe\"@x.example>",
                mail_cmd("\"john doe\"@x.example", NONE),
            ),
            (b"MAIL FROM:<\"a>b\"@x>", mail_cmd("\"a>b\"@x", NONE)),
            (
                b"MAIL FROM:<j\xc3\xb6rg@x.example> SMTPUTF8",
                mail_cmd(
                    "j\u{f6}rg@x.example",
                    MailParams {
                        smtputf8: true,
                        ..NONE
                    },
                ),
            ),
            (
                b"MAIL FROM:<j\xc3\xb6rg@x.example>",
                mail_cmd("j\u{f6}rg@x.example", NONE),
            ),
            (
                b"MAIL FROM:<a@b> SIZE=1000 BODY=8BITMIME",
                mail_cmd(
                    "a@b",
                    MailParams {
                        size: Some(1000),
                        body: Body::EightBitMime,
                        smtputf8: false,
                    },
                ),
            ),
            (
                b"MAIL FROM:<a@b> body=binarymime",
                mail_cmd(
                    "a@b",
                    MailParams {
                        body: Body::BinaryMime,
                        ..NONE
                    },
                ),
            ),
            (b"MAIL FROM:<a@b> BODY=7BIT", mail_cmd("a@b", NONE)),
            (
                b"MAIL FROM:<a@b>   SIZE=5  ",
                mail_cmd(
                    "a@b",
                    MailParams {
                        size: Some(5),
                        ..NONE
                    },
                ),
            ),
            (
                b"MAIL FROM:<a@b> SIZE=99999999999999999999999",
                mail_cmd(
                    "a@b",
                    MailParams {
                        size: Some(u64::MAX),
                        ..NONE
                    },
                ),
            ),
            (b"MAIL", Err(ParseError::MailSyntax)),
            (b"MAIL TO:<a@b>", Err(ParseError::MailSyntax)),
            (b"MAIL FROM:", Err(ParseError::MailSyntax)),
            (b"MAIL FROM<a@b>", Err(ParseError::MailSyntax)),
            (b"MAIL FROM:<a@b", Err(ParseError::BadSender)),
            (b"MAIL FROM:<a@b>x", Err(ParseError::BadSender)),
            (b"MAIL FROM:<a b@c>", Err(ParseError::BadSender)),
            (b"MAIL FROM:<a\x00b@c>", Err(ParseError::BadSender)),
            (b"MAIL FROM:<a\xff@c>", Err(ParseError::BadSender)),
            (b"MAIL FROM:<\"unterminated@c>", Err(ParseError::BadSender)),
            (b"MAIL FROM:<<a@b>>", Err(ParseError::BadSender)),
            (
                b"MAIL FROM:<@relay-without-colon>",
                Err(ParseError::BadSender),
            ),
            (b"MAIL FROM:a@b>", Err(ParseError::BadSender)),
            (b"MAIL FROM:<a@b> SIZE=", Err(ParseError::BadParameter)),
            (b"MAIL FROM:<a@b> SIZE", Err(ParseError::BadSize)),
            (b"MAIL FROM:<a@b> SIZE=12k", Err(ParseError::BadSize)),
            (b"MAIL FROM:<a@b> SIZE=-1", Err(ParseError::BadSize)),
            (b"MAIL FROM:<a@b> BODY=9BIT", Err(ParseError::BadBody)),
            (b"MAIL FROM:<a@b> BODY", Err(ParseError::BadBody)),
            (
                b"MAIL FROM:<a@b> SMTPUTF8=yes",
                Err(ParseError::BadParameter),
            ),
            // DSN and AUTH parameters: checked, then ignored (DSN is not advertised).
            (b"MAIL FROM:<a@b> RET=HDRS", mail_cmd("a@b", NONE)),
            (
                b"MAIL FROM:<a@b> RET=full ENVID=job+2B42 AUTH=<>",
                mail_cmd("a@b", NONE),
            ),
            (b"MAIL FROM:<a@b> AUTH=cron+40box", mail_cmd("a@b", NONE)),
            (b"MAIL FROM:<a@b> RET=FOO", Err(ParseError::BadParameter)),
            (b"MAIL FROM:<a@b> RET", Err(ParseError::BadParameter)),
            (b"MAIL FROM:<a@b> ENVID=a+2", Err(ParseError::BadParameter)),
            (b"MAIL FROM:<a@b> ENVID=a+zz", Err(ParseError::BadParameter)),
            (b"MAIL FROM:<a@b> ENVID=a+2b", mail_cmd("a@b", NONE)),
            (b"MAIL FROM:<a@b> AUTH", Err(ParseError::BadParameter)),
            (
                b"MAIL FROM:<a@b> X-UNKNOWN=1",
                Err(ParseError::UnsupportedParameter),
            ),
            (
                b"MAIL FROM:<a@b> NOTIFY=NEVER",
                Err(ParseError::UnsupportedParameter),
            ),
            (b"MAIL FROM:<a@b> =x", Err(ParseError::BadParameter)),
            (b"MAIL FROM:<a@b> -X=1", Err(ParseError::BadParameter)),
            (b"MAIL FROM:<a@b> X=a\x01", Err(ParseError::BadParameter)),
            // RCPT
            (b"RCPT TO:<c@d.example>", rcpt_cmd("c@d.example")),
            (b"rcpt to: <c@d.example>", rcpt_cmd("c@d.example")),
            (b"RCPT TO:root", rcpt_cmd("root")),
            (b"RCPT TO:<Postmaster>", rcpt_cmd("Postmaster")),
            (
                b"RCPT TO:<c@d> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d",
                rcpt_cmd("c@d"),
            ),
            (b"RCPT TO:<>", Err(ParseError::BadRecipient)),
            (b"RCPT TO:", Err(ParseError::RcptSyntax)),
            (b"RCPT", Err(ParseError::RcptSyntax)),
            (b"RCPT FROM:<c@d>", Err(ParseError::RcptSyntax)),
            (b"RCPT TO:<c\x7f@d>", Err(ParseError::BadRecipient)),
            (b"RCPT TO:<c@d> NOTIFY=", Err(ParseError::BadParameter)),
            (b"RCPT TO:<c@d> NOTIFY=never", rcpt_cmd("c@d")),
            (b"RCPT TO:<c@d> NOTIFY=DELAY", rcpt_cmd("c@d")),
            (
                b"RCPT TO:<c@d> NOTIFY=SOMETIMES",
                Err(ParseError::BadParameter),
            ),
            (
                b"RCPT TO:<c@d> NOTIFY=NEVER,SUCCESS",
                Err(ParseError::BadParameter),
            ),
            (b"RCPT TO:<c@d> NOTIFY", Err(ParseError::BadParameter)),
            (
                b"RCPT TO:<c@d> ORCPT=garbage",
                Err(ParseError::BadParameter),
            ),
            (
                b"RCPT TO:<c@d> ORCPT=rfc822;",
                Err(ParseError::BadParameter),
            ),
            (
                b"RCPT TO:<c@d> RET=HDRS",
                Err(ParseError::UnsupportedParameter),
            ),
            // BDAT
            (
                b"BDAT 0 LAST",
                Ok(Command::Bdat {
                    size: 0,
                    last: true,
                }),
            ),
            (
                b"BDAT 1000",
                Ok(Command::Bdat {
                    size: 1000,
                    last: false,
                }),
            ),
            (
                b"bdat 12 last",
                Ok(Command::Bdat {
                    size: 12,
                    last: true,
                }),
            ),
            (
                b"BDAT 18446744073709551615",
                Ok(Command::Bdat {
                    size: u64::MAX,
                    last: false,
                }),
            ),
            (b"BDAT 18446744073709551616", Err(ParseError::BdatSyntax)),
            (b"BDAT", Err(ParseError::BdatSyntax)),
            (b"BDAT -1", Err(ParseError::BdatSyntax)),
            (b"BDAT 1x", Err(ParseError::BdatSyntax)),
            (b"BDAT 1 FIRST", Err(ParseError::BdatSyntax)),
            (b"BDAT 1 LAST LAST", Err(ParseError::BdatSyntax)),
        ];
        for (line, expected) in table {
            assert_eq!(
                &parse(line),
                expected,
                "line {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    /// Every error maps to a reply whose code class matches what DESIGN.md promises.
    #[test]
    fn error_replies() {
        let table = [
            (ParseError::Garbage, "500 5.5.2"),
            (ParseError::Unrecognized, "502 5.5.1"),
            (ParseError::HelloSyntax { extended: true }, "501 5.5.4"),
            (ParseError::MailSyntax, "501 5.5.4"),
            (ParseError::RcptSyntax, "501 5.5.4"),
            (ParseError::BadSender, "501 5.1.7"),
            (ParseError::BadRecipient, "501 5.1.3"),
            (ParseError::DataSyntax, "501 5.5.4"),
            (ParseError::BdatSyntax, "521 5.5.4"),
            (ParseError::BadParameter, "501 5.5.4"),
            (ParseError::BadSize, "501 5.5.4"),
            (ParseError::BadBody, "501 5.5.4"),
            (ParseError::UnsupportedParameter, "555 5.5.4"),
        ];
        for (error, code) in table {
            assert!(error.reply().starts_with(code), "{error:?}");
            assert!(!error.to_string().is_empty());
        }
    }
}
