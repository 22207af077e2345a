//! The session's fixed SMTP replies (RFC 5321 §4.2, enhanced codes per RFC 3463), one named
//! constant per situation so that every answer the engine gives can be found in one place.
//!
//! Texts follow Postfix where Postfix has an answer, so callers cannot tell us apart. Replies
//! that carry variable text (greeting, EHLO, `queued as`, BDAT chunk size) are built in
//! `super` from the `*_PREFIX` pieces here.

/// Generic success: NOOP, RSET.
pub(crate) const OK: &str = "250 2.0.0 Ok\r\n";
/// MAIL accepted.
pub(crate) const SENDER_OK: &str = "250 2.1.0 Ok\r\n";
/// RCPT accepted.
pub(crate) const RECIPIENT_OK: &str = "250 2.1.5 Ok\r\n";
/// DATA accepted: send the message.
pub(crate) const START_DATA: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";
/// QUIT.
pub(crate) const BYE: &str = "221 2.0.0 Bye\r\n";
/// VRFY: we never disclose whether a mailbox exists (RFC 5321 §3.5.3).
pub(crate) const CANNOT_VRFY: &str =
    "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n";
/// HELP.
pub(crate) const HELP: &str =
    "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n";

/// The start of `250 2.0.0 Ok: queued as <ID>`.
pub(crate) const QUEUED_PREFIX: &str = "250 2.0.0 Ok: queued as ";
/// The start of the reply to a BDAT chunk that is not the last one.
pub(crate) const CHUNK_OK_PREFIX: &str = "250 2.0.0 Ok: ";

/// A line that is not a command at all (empty, control or 8-bit bytes in the verb).
pub(crate) const BAD_SYNTAX: &str = "500 5.5.2 Error: bad syntax\r\n";
/// A command line longer than `max_line_length`; the rest of the line is discarded.
pub(crate) const LINE_TOO_LONG: &str = "500 5.5.2 Line too long\r\n";
/// A well-formed verb we do not know.
pub(crate) const UNRECOGNIZED: &str = "502 5.5.1 Error: command not recognized\r\n";
/// Not SMTP (an HTTP request, a header line, a line not starting with a letter): answered,
/// then the connection is closed.
pub(crate) const FORBIDDEN: &str = "221 2.7.0 Error: I can break rules, too. Goodbye.\r\n";
/// EXPN, STARTTLS, AUTH: known, deliberately not offered.
pub(crate) const NOT_IMPLEMENTED: &str = "502 5.5.1 Error: command not implemented\r\n";

/// HELO without a name.
pub(crate) const SYNTAX_HELO: &str = "501 5.5.4 Syntax: HELO hostname\r\n";
/// EHLO without a name.
pub(crate) const SYNTAX_EHLO: &str = "501 5.5.4 Syntax: EHLO hostname\r\n";
/// MAIL without a well-formed `FROM:` path.
pub(crate) const SYNTAX_MAIL: &str = "501 5.5.4 Syntax: MAIL FROM:<address>\r\n";
/// RCPT without a well-formed `TO:` path.
pub(crate) const SYNTAX_RCPT: &str = "501 5.5.4 Syntax: RCPT TO:<address>\r\n";
/// DATA with an argument.
pub(crate) const SYNTAX_DATA: &str = "501 5.5.4 Syntax: DATA\r\n";
/// RSET with an argument.
pub(crate) const SYNTAX_RSET: &str = "501 5.5.4 Syntax: RSET\r\n";
/// BDAT whose size is missing, not a number or followed by something other than LAST: the
/// connection is closed after it (Postfix's reply and behaviour).
pub(crate) const SYNTAX_BDAT: &str = "521 5.5.4 Syntax: BDAT count [LAST]\r\n";
/// VRFY without an argument.
pub(crate) const SYNTAX_VRFY: &str = "501 5.5.4 Syntax: VRFY address\r\n";
/// A MAIL or RCPT parameter that is not `keyword[=value]`.
pub(crate) const BAD_PARAMETER: &str = "501 5.5.4 Bad parameter syntax\r\n";
/// `SIZE=` without a decimal number.
pub(crate) const BAD_SIZE: &str = "501 5.5.4 Bad SIZE parameter\r\n";
/// `BODY=` other than 7BIT, 8BITMIME or BINARYMIME.
pub(crate) const BAD_BODY: &str = "501 5.5.4 Bad BODY parameter\r\n";
/// A well-formed MAIL or RCPT parameter of an extension we do not offer.
pub(crate) const UNSUPPORTED_PARAMETER: &str = "555 5.5.4 Unsupported option\r\n";
/// An unparsable reverse path.
pub(crate) const BAD_SENDER: &str = "501 5.1.7 Bad sender address syntax\r\n";
/// An unparsable forward path (or `<>`).
pub(crate) const BAD_RECIPIENT: &str = "501 5.1.3 Bad recipient address syntax\r\n";

/// RCPT, DATA or BDAT before MAIL.
pub(crate) const NEED_MAIL: &str = "503 5.5.1 Error: need MAIL command\r\n";
/// DATA or BDAT with no transaction at all (Postfix's text).
pub(crate) const NEED_RECIPIENT: &str = "503 5.5.1 Error: need RCPT command\r\n";
/// DATA or BDAT after MAIL but with no recipient accepted (Postfix's reply).
pub(crate) const NO_VALID_RECIPIENTS: &str = "554 5.5.1 Error: no valid recipients\r\n";
/// MAIL inside a transaction.
pub(crate) const NESTED_MAIL: &str = "503 5.5.1 Error: nested MAIL command\r\n";
/// RCPT or DATA after the first BDAT chunk of a message.
pub(crate) const BDAT_IN_PROGRESS: &str = "503 5.5.1 Error: BDAT transaction in progress\r\n";
/// DATA for a message declared `BODY=BINARYMIME` (RFC 3030 §3).
pub(crate) const BINARYMIME_NEEDS_BDAT: &str = "503 5.5.1 Error: BODY=BINARYMIME requires BDAT\r\n";

/// A size declared with `SIZE=` over `max_message_size`.
pub(crate) const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed limit\r\n";
/// A message whose data went over `max_message_size`.
pub(crate) const TOO_BIG_DATA: &str = "552 5.3.4 Error: message file too big\r\n";
/// More than `max_recipients` RCPTs.
pub(crate) const TOO_MANY_RECIPIENTS: &str = "452 4.5.3 Error: too many recipients\r\n";
/// The host could not make the message durable: never 250.
pub(crate) const STORAGE_FAILED: &str = "452 4.3.1 Insufficient system storage\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every constant is one well-formed reply line: code, space, enhanced code matching the
    /// class of the basic code (RFC 3463), text, CRLF, nothing else.
    #[test]
    fn every_reply_is_one_wellformed_line() {
        let all = [
            OK,
            SENDER_OK,
            RECIPIENT_OK,
            START_DATA,
            BYE,
            CANNOT_VRFY,
            HELP,
            BAD_SYNTAX,
            LINE_TOO_LONG,
            UNRECOGNIZED,
            NOT_IMPLEMENTED,
            SYNTAX_HELO,
            SYNTAX_EHLO,
            SYNTAX_MAIL,
            SYNTAX_RCPT,
            SYNTAX_DATA,
            SYNTAX_RSET,
            SYNTAX_BDAT,
            SYNTAX_VRFY,
            BAD_PARAMETER,
            BAD_SIZE,
            BAD_BODY,
            UNSUPPORTED_PARAMETER,
            BAD_SENDER,
            BAD_RECIPIENT,
            NEED_MAIL,
            NEED_RECIPIENT,
            NO_VALID_RECIPIENTS,
            NESTED_MAIL,
            BDAT_IN_PROGRESS,
            BINARYMIME_NEEDS_BDAT,
            TOO_BIG,
            TOO_BIG_DATA,
            FORBIDDEN,
            TOO_MANY_RECIPIENTS,
            STORAGE_FAILED,
        ];
        for reply in all {
            let body = reply
                .strip_suffix("\r\n")
                .unwrap_or_else(|| panic!("{reply:?}"));
            assert!(!body.contains(['\r', '\n']), "{reply:?}");
            let bytes = body.as_bytes();
            assert!(bytes[..3].iter().all(u8::is_ascii_digit), "{reply:?}");
            assert_eq!(bytes[3], b' ', "{reply:?}");
            if reply.starts_with("354") {
                continue; // intermediate reply: no enhanced code (RFC 3463 §2)
            }
            assert_eq!(bytes[4], bytes[0], "class of enhanced code in {reply:?}");
            assert_eq!(bytes[5], b'.', "{reply:?}");
        }
    }
}
