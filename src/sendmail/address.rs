//! RFC 822 address lists, read leniently: the one parser behind recipient arguments, `-f`,
//! and the `To`/`Cc`/`Bcc` headers that `-t` reads.
//!
//! Postfix parses every recipient argument like a header, and callers depend on it: fail2ban
//! passes `"<dest>"` and cron passes a `MAILTO` that may hold `a,b`. Only the addresses are
//! wanted here, so display names, comments and group names are dropped, and nothing is ever
//! rejected: text that is not an address list still yields its best reading.

/// The addresses in one RFC 822 address list, in order, without display names, comments or
/// group labels. Empty items (`a,,b`, `undisclosed-recipients:;`, `<>`) are dropped.
pub fn parse_list(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for item in split_items(text) {
        out.extend(item_addresses(&item));
    }
    out
}

/// The address of a single mailbox such as `-f` takes: `a@b`, `<a@b>` or `Name <a@b>`.
/// `None` for the null sender (`<>`, `""` or nothing at all).
pub fn parse_mailbox(text: &str) -> Option<String> {
    parse_list(text).into_iter().next()
}

/// Whether an address holds a control character (below 0x20, or DEL). Such an address is
/// refused (exit 64), as the SMTP side refuses it: it could forge a line or send terminal
/// escapes to whoever reads `mailq` or the log.
pub fn has_control(address: &str) -> bool {
    address.chars().any(|c| c < ' ' || c == '\x7f')
}

/// Splits a list at the commas and group delimiters that lie outside quotes, comments and
/// angle brackets. A group label (`team: a, b;`) is dropped with its colon.
fn split_items(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    let (mut in_quote, mut comment_depth, mut in_angle) = (false, 0usize, false);
    // A domain literal such as `[IPv6:::1]` holds colons that are neither group labels nor
    // source routes.
    let mut in_literal = false;
    while let Some(c) = chars.next() {
        if in_quote {
            current.push(c);
            match c {
                '\\' => current.extend(chars.next()),
                '"' => in_quote = false,
                _ => {}
            }
            continue;
        }
        if comment_depth > 0 {
            // Comments are dropped here, so `a@b (Name, Jr.)` does not split at its comma.
            match c {
                '\\' => {
                    chars.next();
                }
                '(' => comment_depth += 1,
                ')' => comment_depth -= 1,
                _ => {}
            }
            if comment_depth == 0 {
                current.push(' ');
            }
            continue;
        }
        if in_literal {
            current.push(c);
            in_literal = c != ']';
            continue;
        }
        match c {
            '[' => {
                in_literal = true;
                current.push(c);
            }
            '"' => {
                in_quote = true;
                current.push(c);
            }
            '(' => comment_depth = 1,
            '<' => {
                in_angle = true;
                current.push(c);
            }
            '>' => {
                in_angle = false;
                current.push(c);
            }
            ',' | ';' if !in_angle => items.push(std::mem::take(&mut current)),
            // A colon outside angle brackets ends a group's display name; inside them it
            // ends an obsolete source route, which `item_addresses` strips.
            ':' if !in_angle => current.clear(),
            _ => current.push(c),
        }
    }
    items.push(current);
    items
}

/// The addresses in one item: the text inside its angle brackets when it has any, otherwise
/// its words (a bare list such as `a b` is two addresses, as cron's MAILTO is split).
fn item_addresses(item: &str) -> Vec<String> {
    let item = item.trim();
    if item.is_empty() {
        return Vec::new();
    }
    if let Some(open) = rfind_unquoted(item, '<') {
        let inner = &item[open + 1..];
        let inner = inner.split('>').next().unwrap_or("");
        // `<@relay1,@relay2:user@host>`: the obsolete source route is not part of the address.
        let inner = match inner.rfind(':') {
            Some(colon) if inner.starts_with('@') => &inner[colon + 1..],
            _ => inner,
        };
        let addr = inner.trim();
        return if addr.is_empty() {
            Vec::new()
        } else {
            vec![addr.to_owned()]
        };
    }
    split_words(item)
}

/// The byte offset of the last `c` outside double quotes.
fn rfind_unquoted(text: &str, c: char) -> Option<usize> {
    let mut in_quote = false;
    let mut escaped = false;
    let mut found = None;
    for (i, ch) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quote && ch == '\\' {
            escaped = true;
        } else if ch == '"' {
            in_quote = !in_quote;
        } else if !in_quote && ch == c {
            found = Some(i);
        }
    }
    found
}

/// Whitespace-separated words outside quotes (`"john doe"@x` stays one word).
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_quote = false;
    let mut escaped = false;
    for ch in text.chars() {
        if escaped {
            escaped = false;
            current.push(ch);
            continue;
        }
        match ch {
            '\\' if in_quote => {
                escaped = true;
                current.push(ch);
            }
            '"' => {
                in_quote = !in_quote;
                current.push(ch);
            }
            c if c.is_whitespace() && !in_quote => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists() {
        let cases: &[(&str, &[&str])] = &[
            ("root", &["root"]),
            ("a@b", &["a@b"]),
            ("a@b,c@d", &["a@b", "c@d"]),
            (" a@b , , c@d ,", &["a@b", "c@d"]),
            ("<a@b>", &["a@b"]),
            ("Jane Doe <jane@x>", &["jane@x"]),
            ("\"Doe, Jane\" <jane@x>, bob@y", &["jane@x", "bob@y"]),
            ("jane@x (Jane, Doe)", &["jane@x"]),
            ("undisclosed-recipients:;", &[]),
            ("team: a@x, B <b@y>;, c@z", &["a@x", "b@y", "c@z"]),
            ("<>", &[]),
            ("", &[]),
            ("\"john doe\"@x", &["\"john doe\"@x"]),
            ("<@relay.example:user@host>", &["user@host"]),
            ("a@b c@d", &["a@b", "c@d"]),
            ("=?UTF-8?B?w6k=?= <e@x>", &["e@x"]),
            ("\"a<b\" <c@d>", &["c@d"]),
            ("root@[IPv6:::1], x@y", &["root@[IPv6:::1]", "x@y"]),
        ];
        for (input, want) in cases {
            assert_eq!(parse_list(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn mailboxes() {
        let cases: &[(&str, Option<&str>)] = &[
            ("", None),
            ("<>", None),
            ("  ", None),
            ("bounce@x", Some("bounce@x")),
            ("<bounce@x>", Some("bounce@x")),
            ("Bounce <bounce@x>", Some("bounce@x")),
        ];
        for (input, want) in cases {
            assert_eq!(parse_mailbox(input).as_deref(), *want, "input {input:?}");
        }
    }
}
