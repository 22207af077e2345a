//! Unit tests for the digest as a whole: crafted messages in, rendered text checked.

use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use super::text::is_base64_line;
use super::*;
use crate::envelope::Origin;

const ARRIVAL_SECS: u64 = 1_795_529_786; // Tue, 24 Nov 2026 14:16:26 +0000

fn local_envelope() -> Envelope {
    Envelope {
        sender: "root@host".into(),
        recipients: vec!["root@host".into()],
        origin: Origin::Local {
            uid: 0,
            user: "root".into(),
            full_name: None,
        },
        arrival: UNIX_EPOCH + Duration::from_secs(ARRIVAL_SECS),
    }
}

fn smtp_envelope(sender: &str, recipients: &[&str]) -> Envelope {
    Envelope {
        sender: sender.into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        origin: Origin::Smtp {
            peer: SocketAddr::from(([127, 0, 0, 1], 41000)),
            helo: "client.example".into(),
        },
        arrival: UNIX_EPOCH + Duration::from_secs(ARRIVAL_SECS),
    }
}

fn opts(max_body_chars: usize) -> DigestOptions {
    DigestOptions {
        max_body_chars,
        hostname: "host".into(),
    }
}

fn digest(raw: &[u8]) -> Digest {
    Digest::build(raw, raw.len() as u64, &local_envelope(), &opts(4000))
}

/// The body section of a rendered digest: after the first blank line.
fn body_of(rendered: &str) -> &str {
    rendered.split_once("\n\n").map_or("", |(_, b)| b)
}

/// Checks what every digest must be, whatever the input: non-empty, bounded, no control
/// characters, no base64 dump.
fn assert_sane(d: &Digest, max_body_chars: usize) -> String {
    let r = d.render();
    assert!(r.starts_with("Subject: "), "{r}");
    assert!(r.contains("\nFrom: ") && r.contains("\nDate: "), "{r}");
    assert!(
        r.chars().count() <= max_body_chars + 40_000,
        "rendered digest too long: {} chars",
        r.chars().count()
    );
    assert!(
        !r.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
        "control characters in {r:?}"
    );
    assert!(!r.lines().any(is_base64_line), "base64 in {r}");
    r
}

#[test]
fn latin1_subject_and_body() {
    let mut raw = b"From: =?ISO-8859-1?Q?J=F6rg_M=FCller?= <joerg@example.de>\r\n\
To: root@host\r\n\
Subject: =?ISO-8859-1?Q?Gr=FC=DFe_aus_K=F6ln?=\r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0100\r\n\
Content-Type: text/plain; charset=ISO-8859-1\r\n\
Content-Transfer-Encoding: 8bit\r\n\r\n"
        .to_vec();
    raw.extend_from_slice(b"Sch\xf6ne Gr\xfc\xdfe, 20 \xb0C und Sonne.\r\n");
    let d = digest(&raw);
    assert_eq!(d.subject, "Grüße aus Köln");
    assert_eq!(d.from, "Jörg Müller <joerg@example.de>");
    assert_eq!(d.body, "Schöne Grüße, 20 °C und Sonne.");
    assert_eq!(d.date, "Mon, 23 Nov 2026 10:00:00 +0100");
    assert!(!d.from_synthesized && !d.date_synthesized);
    let r = assert_sane(&d, 4000);
    assert!(r.contains("Subject: Grüße aus Köln\n"), "{r}");
}

#[test]
fn latin1_quoted_printable_body() {
    let raw = b"From: a@example.org\nSubject: qp\nContent-Type: text/plain; charset=iso-8859-1\n\
Content-Transfer-Encoding: quoted-printable\n\nCaf=E9 cr=E8me, soft=\n break\n";
    assert_eq!(digest(raw).body, "Café crème, soft break");
}

#[test]
fn undeclared_latin1_is_read_as_windows_1252() {
    let raw = b"From: old@example.de\nSubject: Gr\xfc\xdfe vom Server\n\nAlles in Ordnung, 20 \x80 gespart.\n";
    let d = digest(raw);
    assert_eq!(d.subject, "Grüße vom Server");
    assert_eq!(d.body, "Alles in Ordnung, 20 € gespart.");
}

#[test]
fn encoded_words_with_unknown_or_contradicted_charsets() {
    // An unknown label over Latin-1 bytes, a UTF-8 label over Latin-1 bytes, a known label
    // beside them, adjacent words joined, and text between words kept.
    let raw = b"From: =?x-unknown?Q?J=F6rg?= <joerg@example.de>\n\
Subject: =?utf-8?q?caf=E9?= =?iso-8859-1?q?_ol=E9?= and =?unknown-8bit?B?Z3L832U=?=\n\n\
Body.\n";
    let d = digest(raw);
    assert_eq!(d.from, "Jörg <joerg@example.de>");
    assert_eq!(d.subject, "café olé and grüße");
    // Valid UTF-8 under an unknown label was already right, and stays so.
    let raw = "From: a@example.org\nSubject: =?x-unknown?B?R3LDvMOfZQ==?=\n\nx\n";
    assert_eq!(digest(raw.as_bytes()).subject, "Grüße");
    // A broken word is shown as written, not dropped.
    let raw = b"From: a@example.org\nSubject: =?x-unknown?Q?caf=E9 =?broken\n\nx\n";
    assert_eq!(digest(raw).subject, "=?x-unknown?Q?caf=E9 =?broken");
    let raw = b"From: a@example.org\nSubject: =?utf-8?q?caf=E9?= =?broken?q?x\n\nx\n";
    assert_eq!(digest(raw).subject, "café =?broken?q?x");
    // A hostile header of 100,000 unterminated words after a stray byte (which sends it
    // down this path) is read in linear time: about a second here in a debug build, where
    // the unbounded search took minutes. The bound only tells a hang from a slow machine.
    let mut raw = b"From: a@example.org\nSubject: \xff".to_vec();
    for _ in 0..100_000 {
        raw.extend_from_slice(b"=?a?Q?x");
    }
    raw.extend_from_slice(b"\n\nx\n");
    let started = std::time::Instant::now();
    let d = digest(&raw);
    assert!(d.subject.starts_with("ÿ=?a?Q?x"), "{}", &d.subject[..20]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn headers_only_without_a_final_line_end_keep_their_last_header() {
    // `printf 'To: ops@example.org\nSubject: disk full' | sendmail -t`
    let d = digest(b"To: ops@example.org\nSubject: disk full");
    assert_eq!(d.subject, "disk full");
    assert_eq!(d.to, vec!["ops@example.org".to_string()]);
    let d = digest(b"Subject: crlf\r\nTo: a@b.example");
    assert_eq!(d.subject, "crlf");
    assert_eq!(d.to, vec!["a@b.example".to_string()]);
}

#[test]
fn a_body_of_utf8_and_latin1_lines_is_read_line_by_line() {
    // Cron in the C locale: one command printed UTF-8, another one Latin-1.
    let raw =
        b"From: root (Cron Daemon)\nSubject: job\nContent-Type: text/plain; charset=US-ASCII\n\
Content-Transfer-Encoding: 8bit\n\ncaf\xc3\xa9 \xe2\x9c\x93 ok\nr\xe9sum\xe9 failed\n";
    assert_eq!(digest(raw).body, "café ✓ ok\nrésumé failed");
    // Labelled UTF-8 (or nothing), the same mixture.
    let raw = b"From: a@example.org\nSubject: s\nContent-Type: text/plain; charset=utf-8\n\n\
caf\xc3\xa9 ok\nr\xe9sum\xe9 failed\n";
    assert_eq!(digest(raw).body, "café ok\nrésumé failed");
    // A Latin-1 label whose lines are Latin-1 but for one UTF-8 line.
    let raw = b"From: a@example.org\nSubject: s\nContent-Type: text/plain; charset=iso-8859-1\n\n\
caf\xc3\xa9\n\xa4 \xe9t\xe9\n";
    assert_eq!(digest(raw).body, "café\n¤ été");
}

#[test]
fn iso_2022_jp_subject_and_body() {
    let mut raw = b"From: tanaka@example.jp\nSubject: =?ISO-2022-JP?B?GyRCN29MPiVGJTklSBsoQg==?=\n\
Content-Type: text/plain; charset=ISO-2022-JP\nContent-Transfer-Encoding: 7bit\n\n"
        .to_vec();
    raw.extend_from_slice(b"\x1b$B$3$s$K$A$O@$3&\x1b(B\n");
    let d = digest(&raw);
    assert_eq!(d.subject, "件名テスト");
    assert_eq!(d.body, "こんにちは世界");
    assert_sane(&d, 4000);
}

#[test]
fn emoji_subject_and_body() {
    let raw = "From: ci@example.org\nSubject: =?UTF-8?B?QmFja3VwIOKchSBkb25lIPCfjok=?=\n\
Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\
All good 👍 — 3 files 📁\n";
    let d = digest(raw.as_bytes());
    assert_eq!(d.subject, "Backup ✅ done 🎉");
    assert_eq!(d.body, "All good 👍 — 3 files 📁");
}

#[test]
fn html_only_newsletter() {
    let raw = r#"From: News <news@shop.example>
To: root@host
Subject: Our November deals
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

<!DOCTYPE html><html><head><title>Deals</title>
<style>body { color: #333; } .x { display:none }</style>
<script>var tracking =3D "<b>";</script></head>
<body><!-- preheader --><h1>November&nbsp;deals</h1>
<p>Hello   friend,<br>this month:</p>
<ul><li>Caf&eacute; beans &ndash; 20% off</li><li>Tea &amp; cups</li></ul>
<table><tr><td>Price</td><td>&euro;9</td></tr></table>
<p><a href=3D"https://shop.example/deals?id=3D7&amp;u=3D1">Read more</a>
or visit <a href=3D"https://shop.example/">https://shop.example/</a></p>
</body></html>
"#;
    let d = digest(raw.as_bytes());
    let want = "November deals\n\nHello friend,\nthis month:\n\n- Café beans – 20% off\n\
- Tea & cups\n\nPrice €9\n\nRead more (https://shop.example/deals?id=7&u=1) or visit \
https://shop.example/";
    assert_eq!(d.body, want);
    let r = assert_sane(&d, 4000);
    for junk in ["<", "color:", "tracking", "preheader", "&nbsp;", "Deals\n"] {
        assert!(!body_of(&r).contains(junk), "{junk:?} in {r}");
    }
}

#[test]
fn alternative_prefers_plain() {
    let raw = "From: a@example.org\nSubject: alt\nContent-Type: multipart/alternative; boundary=b\n\n\
--b\nContent-Type: text/plain\n\nthe plain side\n--b\nContent-Type: text/html\n\n<p>the html side</p>\n--b--\n";
    let d = digest(raw.as_bytes());
    assert_eq!(d.body, "the plain side");
    assert!(d.attachments.is_empty(), "{:?}", d.attachments);
}

#[test]
fn cron_mail() {
    let raw = "From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host> backup\n\
MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\
X-Cron-Env: <SHELL=/bin/sh>\nX-Cron-Env: <HOME=/root>\nX-Cron-Env: <PATH=/usr/bin:/bin>\n\
X-Cron-Env: <LOGNAME=root>\n\nrsync: 1234 files transferred\nbackup finished in 42s\n";
    let env = Envelope {
        sender: "root".into(),
        recipients: vec!["root".into()],
        ..local_envelope()
    };
    let d = Digest::build(raw.as_bytes(), raw.len() as u64, &env, &opts(4000));
    assert_eq!(d.subject, "Cron <root@host> backup");
    assert_eq!(d.from, "Cron Daemon <root>");
    assert_eq!(d.to, vec!["root".to_string()]);
    assert_eq!(
        d.body,
        "rsync: 1234 files transferred\nbackup finished in 42s"
    );
    assert!(d.date_synthesized);
    let r = assert_sane(&d, 4000);
    let want_head = "Subject: Cron <root@host> backup\nFrom: Cron Daemon <root>\nTo: root\n\
Date: Tue, 24 Nov 2026 14:16:26 +0000 (not in message; arrival time)\n\
Arrived via sendmail, uid 0 (root)\n\nrsync:";
    assert!(r.starts_with(want_head), "{r}");
    assert!(!r.contains("X-Cron-Env") && !r.contains("Envelope"), "{r}");
}

/// A base64 attachment of `size` bytes after a short text part.
fn with_attachment(size: usize) -> Vec<u8> {
    let mut raw = b"From: backup@example.org\nTo: root@host\nSubject: dump\n\
Content-Type: multipart/mixed; boundary=\"XYZ\"\n\n--XYZ\nContent-Type: text/plain\n\n\
Dump attached.\n--XYZ\nContent-Type: application/octet-stream; name=\"dump.bin\"\n\
Content-Disposition: attachment; filename=\"dump.bin\"\nContent-Transfer-Encoding: base64\n\n"
        .to_vec();
    // Bytes 0..=255 repeated encode to a repeating base64 pattern; build it line by line.
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    for chunk in data.chunks(57) {
        raw.extend_from_slice(encode_base64(chunk).as_bytes());
        raw.push(b'\n');
    }
    raw.extend_from_slice(b"--XYZ--\n");
    raw
}

fn encode_base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = u32::from(c[0]) << 16
            | u32::from(*c.get(1).unwrap_or(&0)) << 8
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(char::from(A[(n >> 18) as usize & 63]));
        out.push(char::from(A[(n >> 12) as usize & 63]));
        out.push(if c.len() > 1 {
            char::from(A[(n >> 6) as usize & 63])
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            char::from(A[n as usize & 63])
        } else {
            '='
        });
    }
    out
}

#[test]
fn attachment_listed_with_size_not_dumped() {
    let raw = with_attachment(2 << 20);
    let d = digest(&raw);
    assert_eq!(d.body, "Dump attached.");
    assert_eq!(
        d.attachments,
        vec![Attachment {
            name: "dump.bin".into(),
            content_type: "application/octet-stream".into(),
            size: 2 << 20,
            cut_short: false,
            detail: None,
        }]
    );
    let r = assert_sane(&d, 4000);
    assert!(
        r.ends_with("Attachments (1):\n- dump.bin (application/octet-stream, 2.0 MiB)"),
        "{r}"
    );
}

#[test]
fn five_mib_attachment_beyond_the_parse_limit() {
    let raw = with_attachment(5 << 20);
    assert!(raw.len() > MAX_PARSE_BYTES);
    // What deliver does: only the first MAX_PARSE_BYTES, and the real size.
    let head = &raw[..MAX_PARSE_BYTES];
    for input in [head, &raw[..]] {
        let d = Digest::build(input, raw.len() as u64, &local_envelope(), &opts(4000));
        assert_eq!(d.body, "Dump attached.");
        assert_eq!(d.attachments.len(), 1);
        let a = &d.attachments[0];
        assert_eq!((a.name.as_str(), a.cut_short), ("dump.bin", true));
        assert!(a.size > 2 << 20 && a.size < 4 << 20, "{}", a.size);
        let r = assert_sane(&d, 4000);
        assert!(
            r.contains("[message is 6.8 MiB; only its first 4.0 MiB were read for this digest]"),
            "{r}"
        );
        assert!(
            r.contains("- dump.bin (application/octet-stream, at least "),
            "{r}"
        );
        assert!(r.len() < 2000, "{} bytes", r.len());
    }
}

#[test]
fn body_capped_by_characters() {
    let body = "é".repeat(10_000);
    let raw = format!(
        "From: a@example.org\nSubject: long\nContent-Type: text/plain; charset=utf-8\n\n{body}\n"
    );
    // Over the cap: the first three quarters and the last quarter, around the note.
    let cases: &[(usize, usize, usize)] = &[(100, 100, 9_900), (10_000, 10_000, 0), (0, 0, 10_000)];
    for &(max, kept, cut) in cases {
        let d = Digest::build(
            raw.as_bytes(),
            raw.len() as u64,
            &local_envelope(),
            &opts(max),
        );
        assert_eq!(
            (
                d.body.chars().count() + d.body_tail.chars().count(),
                d.body_chars_cut
            ),
            (kept, cut),
            "max {max}"
        );
        let r = assert_sane(&d, max);
        let note = format!("[… {cut} more characters not shown]");
        assert_eq!(r.contains(&note), cut > 0, "max {max}: {r}");
    }
}

#[test]
fn synthesized_headers() {
    let raw = b"Subject: no from, no date\n\nhello\n";
    let cases: Vec<(Envelope, &str)> = vec![
        (
            local_envelope(),
            "From: root@host (not in message; envelope sender)",
        ),
        (
            Envelope {
                sender: "alice".into(),
                ..local_envelope()
            },
            "From: alice@host (not in message; envelope sender)",
        ),
        (
            Envelope {
                sender: String::new(),
                origin: Origin::Local {
                    uid: 1000,
                    user: "bob".into(),
                    full_name: None,
                },
                ..local_envelope()
            },
            "From: bob@host (not in message; local user)",
        ),
        (
            smtp_envelope("", &["root@host"]),
            "From: MAILER-DAEMON (not in message; null envelope sender)",
        ),
    ];
    for (env, want) in cases {
        let d = Digest::build(raw, raw.len() as u64, &env, &opts(4000));
        assert!(d.from_synthesized && d.date_synthesized);
        let r = d.render();
        assert!(r.contains(&format!("\n{want}\n")), "{want}: {r}");
        assert!(
            r.contains("\nDate: Tue, 24 Nov 2026 14:16:26 +0000 (not in message; arrival time)\n"),
            "{r}"
        );
    }
}

fn with_full_name(name: &str) -> Envelope {
    Envelope {
        sender: "jane@x".into(),
        origin: Origin::Local {
            uid: 1000,
            user: "jane".into(),
            full_name: Some(name.into()),
        },
        ..local_envelope()
    }
}

/// `sendmail -F`: the full name goes with the synthesized From only, as one clean line.
#[test]
fn full_name_names_a_synthesized_from() {
    let cases: Vec<(&[u8], &str, &str)> = vec![
        (
            b"Subject: no from\n\nhello\n",
            "Jane Roe",
            "\nFrom: Jane Roe <jane@x> (not in message; envelope sender)\n",
        ),
        // Not a message at all: the From is synthesized there too.
        (
            b"\x00\x01 binary\n",
            "Jane Roe",
            "\nFrom: Jane Roe <jane@x> (not in message; envelope sender)\n",
        ),
        // A From of its own wins (Postfix uses -F only when the message has none).
        (
            b"From: Alice <alice@example.org>\nSubject: s\n\nhello\n",
            "Jane Roe",
            "\nFrom: Alice <alice@example.org>\n",
        ),
        // The caller's text can neither add a line nor carry terminal controls.
        (
            b"Subject: s\n\nhello\n",
            "Jane\r\nSubject: forged\u{1b}[2J\u{0}\u{202e}\t x",
            "\nFrom: Jane Subject: forged x <jane@x> (not in message; envelope sender)\n",
        ),
        // A name with nothing to show is no name.
        (
            b"Subject: s\n\nhello\n",
            " \r\n\u{7}",
            "\nFrom: jane@x (not in message; envelope sender)\n",
        ),
    ];
    for (raw, name, want) in cases {
        let d = Digest::build(raw, raw.len() as u64, &with_full_name(name), &opts(4000));
        let r = d.render();
        assert!(r.contains(want), "{name:?}: {r}");
        assert_eq!(r.lines().filter(|l| l.starts_with("Subject:")).count(), 1);
        assert!(!r.contains('\u{1b}') && !r.contains('\u{0}'), "{r:?}");
    }
    // However long, it is cut like any address shown.
    let d = Digest::build(b"x", 1, &with_full_name(&"n".repeat(5000)), &opts(4000));
    let from = d
        .render()
        .lines()
        .find(|l| l.starts_with("From: "))
        .unwrap()
        .to_owned();
    assert!(from.chars().count() < 300, "{from}");
    assert!(
        from.ends_with("\u{2026} <jane@x> (not in message; envelope sender)"),
        "{from}"
    );
}

#[test]
fn envelope_lines() {
    let raw = b"From: Alice <alice@example.org>\nTo: root@host\nCc: ops@host\n\
Bcc: secret@elsewhere.example\nSubject: hi\nDate: Tue, 24 Nov 2026 10:00:00 +0000\n\nbody\n";
    let cases: Vec<(Envelope, &[&str], &[&str])> = vec![
        (
            smtp_envelope("alice@example.org", &["root@host", "ops@host"]),
            &["Arrived via SMTP from 127.0.0.1 (client.example)\n\nbody"],
            &["Envelope", "secret"],
        ),
        (
            smtp_envelope(
                "bounces+123@lists.example",
                &["root@host", "secret@elsewhere.example"],
            ),
            &[
                "\nEnvelope sender: bounces+123@lists.example\n",
                "\nEnvelope recipients not in To/Cc: secret@elsewhere.example\n",
            ],
            &["Bcc"],
        ),
        (
            smtp_envelope("", &["root@host"]),
            &["\nEnvelope sender: <> (null sender)\n"],
            &["Envelope recipients"],
        ),
        (
            Envelope {
                recipients: vec![],
                sender: "alice@example.org".into(),
                ..local_envelope()
            },
            &["\nEnvelope: no recipients\n"],
            &["Envelope sender"],
        ),
    ];
    for (env, present, absent) in cases {
        let d = Digest::build(raw, raw.len() as u64, &env, &opts(4000));
        let r = d.render();
        for p in present {
            assert!(r.contains(p), "{p:?} missing in {r}");
        }
        for a in absent {
            assert!(!r.contains(a), "{a:?} present in {r}");
        }
        assert!(!r.lines().any(|l| l.starts_with("Bcc")), "{r}");
    }
}

#[test]
fn header_lists_and_values_are_bounded() {
    let to: Vec<String> = (0..50).map(|i| format!("user{i}@example.org")).collect();
    let raw = format!(
        "From: a@example.org\nTo: {}\nSubject: {}\n\nx\n",
        to.join(", "),
        "word ".repeat(5_000)
    );
    let d = digest(raw.as_bytes());
    assert_eq!((d.to.len(), d.to_more), (MAX_ADDRESSES_SHOWN, 40));
    assert!(
        d.subject.chars().count() <= 301 && d.subject.ends_with('…'),
        "{}",
        d.subject
    );
    let r = assert_sane(&d, 4000);
    assert!(r.contains("user9@example.org, and 40 more\n"), "{r}");
}

#[test]
fn attachment_list_is_capped() {
    let mut raw = String::from("From: a@example.org\nSubject: many\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nsee\n");
    for i in 0..30 {
        raw.push_str(&format!(
            "--b\nContent-Type: application/pdf; name=\"r{i}.pdf\"\nContent-Transfer-Encoding: base64\n\nJVBERi0=\n"
        ));
    }
    raw.push_str("--b--\n");
    let d = digest(raw.as_bytes());
    assert_eq!(
        (d.attachments.len(), d.attachments_more),
        (MAX_ATTACHMENTS_SHOWN, 10)
    );
    assert_eq!(d.attachments[0].name, "r0.pdf");
    assert_eq!(d.attachments[0].size, 5);
    let r = assert_sane(&d, 4000);
    assert!(
        r.contains("Attachments (30):\n- r0.pdf (application/pdf, 5 bytes)\n"),
        "{r}"
    );
    assert!(r.ends_with("- and 10 more"), "{r}");
}

#[test]
fn attached_message_is_summarised_and_shown_when_alone() {
    let raw = "From: a@example.org\nSubject: Fwd: report\nContent-Type: message/rfc822\n\n\
From: Bob <bob@example.org>\nSubject: the report\n\nnumbers inside\n";
    let d = digest(raw.as_bytes());
    assert_eq!(d.body, "[text of the attached message]\n\nnumbers inside");
    assert_eq!(d.attachments.len(), 1);
    assert_eq!(d.attachments[0].content_type, "message/rfc822");
    assert_eq!(
        d.attachments[0].detail.as_deref(),
        Some("\"the report\" from Bob <bob@example.org>")
    );
}

#[test]
fn truncated_base64_body_is_decoded_leniently() {
    // "Hello from a message cut short" in base64, then the message ends mid-group.
    let raw = b"From: a@example.org\nSubject: cut\nContent-Type: text/plain\n\
Content-Transfer-Encoding: base64\n\nSGVsbG8gZnJvbSBhIG1lc3NhZ2UgY3V0IHNob3J0IQ";
    let d = digest(raw);
    assert!(
        d.body.starts_with("Hello from a message cut short"),
        "{:?}",
        d.body
    );
}

#[test]
fn hostile_and_broken_input_never_fails() {
    let deep_multipart = {
        let mut s = String::from("From: a@example.org\nSubject: deep\n");
        for i in 0..1_000 {
            s.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=\"b{i}\"\n\n--b{i}\n"
            ));
        }
        s.push_str("Content-Type: text/plain\n\nat the bottom\n");
        for i in (0..1_000).rev() {
            s.push_str(&format!("--b{i}--\n"));
        }
        s.into_bytes()
    };
    let deep_messages = ("Content-Type: message/rfc822\n\n".repeat(10_000)
        + "Subject: inner\n\nat the bottom\n")
        .into_bytes();
    let deep_encoded = {
        let inner = "Content-Type: message/rfc822\n\n".repeat(1_000) + "Subject: inner\n\nx\n";
        let mut s = String::from(
            "Subject: outer\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n",
        );
        for chunk in inner.as_bytes().chunks(57) {
            s.push_str(&encode_base64(chunk));
            s.push('\n');
        }
        s.into_bytes()
    };
    let many_headers = {
        let mut s = String::new();
        for i in 0..10_000 {
            s.push_str(&format!("X-Header-{i}: value {i}\n"));
        }
        s.push_str("Subject: many headers\n\nbody after 10000 headers\n");
        s.into_bytes()
    };
    let binary: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("empty", vec![], None),
        ("lone line", b"hello there".to_vec(), Some("hello there")),
        ("lone header", b"Subject: only".to_vec(), None),
        ("binary", binary, None),
        (
            "nul bytes",
            b"Subject: a\x00b\n\nbo\x00dy\x1b[2J\n".to_vec(),
            Some("\n\nbody"),
        ),
        (
            "many headers",
            many_headers,
            Some("body after 10000 headers"),
        ),
        ("multipart 1000 deep", deep_multipart, Some("at the bottom")),
        ("message/rfc822 10000 deep", deep_messages, None),
        ("message/rfc822 1000 deep in base64", deep_encoded, None),
        (
            "bad boundary",
            b"Content-Type: multipart/mixed; boundary=\"\"\n\n--\n\nx\n".to_vec(),
            None,
        ),
        ("bare CRs", b"Subject: cr\r\r\rbody\r".to_vec(), None),
        (
            "invalid date",
            b"Date: Feb 31 0 99:99:99 +9999\nSubject: d\n\nx\n".to_vec(),
            None,
        ),
    ];
    for (what, raw, phrase) in cases {
        let d = Digest::build(&raw, raw.len() as u64, &local_envelope(), &opts(4000));
        let r = assert_sane(&d, 4000);
        if let Some(phrase) = phrase {
            assert!(r.contains(phrase), "{what}: {phrase:?} not in {r}");
        }
    }
}

#[test]
fn oversized_raw_is_clipped_by_build_itself() {
    let raw = format!("Subject: big\n\n{}", "a".repeat(MAX_PARSE_BYTES + 100));
    let d = Digest::build(raw.as_bytes(), 1, &local_envelope(), &opts(10));
    assert_eq!(d.bytes_parsed, MAX_PARSE_BYTES as u64);
    assert_eq!(d.total_size, raw.len() as u64);
    assert!(d.render().contains("only its first 4.0 MiB were read"));
}

#[test]
fn a_long_body_ends_with_its_last_lines() {
    let mut body: String = (0..500).map(|i| format!("progress line {i}\n")).collect();
    body.push_str("ERROR: checksum mismatch, backup NOT saved\n");
    let raw = format!("Subject: backup\n\n{body}");
    let d = Digest::build(
        raw.as_bytes(),
        raw.len() as u64,
        &local_envelope(),
        &opts(400),
    );
    let r = assert_sane(&d, 400);
    let body = body_of(&r);
    let note = format!("\n\n[… {} more characters not shown]\n\n", d.body_chars_cut);
    let (head, tail) = body.split_once(&note).expect(&r);
    assert!(
        head.starts_with("progress line 0\n") && head.ends_with(char::is_numeric),
        "{r}"
    );
    assert!(
        tail.ends_with("\nERROR: checksum mismatch, backup NOT saved"),
        "{r}"
    );
    assert!(!tail.starts_with('\n') && !head.contains("\n\n"), "{r}");
}

/// A message's label, its bytes, phrases its digest body must hold, and phrases its digest
/// must not.
type BodyCase<'a> = (&'a str, &'a [u8], &'a [&'a str], &'a [&'a str]);

/// Checks that each message's digest body contains every wanted phrase and none of the
/// unwanted ones.
fn assert_bodies(cases: &[BodyCase<'_>]) {
    for (what, raw, wanted, unwanted) in cases {
        let d = digest(raw);
        let r = assert_sane(&d, 4000);
        for w in *wanted {
            assert!(body_of(&r).contains(w), "{what}: {w:?} not in {r}");
        }
        for u in *unwanted {
            assert!(!r.contains(u), "{what}: {u:?} in {r}");
        }
    }
}

#[test]
fn charsets_that_contradict_the_bytes() {
    assert_bodies(&[
        (
            "cron in the C locale: ASCII label, UTF-8 output",
            "Subject: Cron <root@box> certbot\nContent-Type: text/plain; charset=ANSI_X3.4-1968\n\
Content-Transfer-Encoding: 8bit\n\n– Certificate for café ✓\n└─ /etc/letsencrypt\n"
                .as_bytes(),
            &["– Certificate for café ✓", "└─ /etc"],
            &["Ã", "â€"],
        ),
        (
            "Latin-1 label, UTF-8 in quoted-printable",
            b"Subject: x\nContent-Type: text/plain; charset=iso-8859-1\n\
Content-Transfer-Encoding: quoted-printable\n\nGr=C3=BC=C3=9Fe\n",
            &["Grüße"],
            &["Ã"],
        ),
        (
            "Latin-1 label, Latin-1 bytes: as declared",
            b"Subject: x\nContent-Type: text/plain; charset=iso-8859-1\n\nGr\xfc\xdfe\n",
            &["Grüße"],
            &["\u{fffd}"],
        ),
        (
            "unknown charset, Latin-1 bytes",
            b"Subject: x\nContent-Type: text/plain; charset=x-unknown-foo\n\nGr\xfc\xdfe aus K\xf6ln\n",
            &["Grüße aus Köln"],
            &["\u{fffd}"],
        ),
        (
            "UTF-8 label, Latin-1 bytes in base64",
            b"Subject: x\nContent-Type: text/plain; charset=utf-8\n\
Content-Transfer-Encoding: base64\n\nR3L831wgYXVzIEv2bG4K\n",
            &["Gr\u{fc}\u{df}\\ aus K\u{f6}ln"],
            &["\u{fffd}"],
        ),
        (
            "UTF-8 label, mostly UTF-8 with one bad byte: lossy, not reinterpreted",
            b"Subject: x\nContent-Type: text/plain; charset=utf-8\n\ncaf\xc3\xa9 \xff\n",
            &["café \u{fffd}"],
            &[],
        ),
        (
            "KOI8-R as declared",
            b"Subject: x\nContent-Type: text/plain; charset=koi8-r\n\n\xf0\xd2\xc9\xd7\xc5\xd4\n",
            &["Привет"],
            &[],
        ),
    ]);
}

#[test]
fn script_output_that_only_looks_like_headers() {
    assert_bodies(&[
        (
            "not a header line first: all of it is text",
            b"Backup status: FAILED\nHost: web1\n\nrsync exited with code 23\n",
            &["Backup status: FAILED\nHost: web1\n\nrsync exited with code 23"],
            &[],
        ),
        (
            "valid-looking fields no mailer writes: shown as text",
            b"Error: disk full\nWarning: inode usage 99%\n\nmore text\n",
            &["Error: disk full\nWarning: inode usage 99%\n\nmore text"],
            &[],
        ),
        (
            "headers, then text without a blank line",
            b"To: root\nSubject: nightly\nBackup status: FAILED\n\nrsync exited\n",
            &["Backup status: FAILED\n\nrsync exited"],
            &[],
        ),
    ]);
    let d = digest(b"To: root\nSubject: nightly\nBackup status: FAILED\n");
    assert_eq!(d.subject, "nightly");
}

#[test]
fn reports_and_broken_multiparts_show_their_text() {
    assert_bodies(&[
        (
            "a bounce with only the status fields",
            b"Subject: Undelivered\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\n\n\
--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\n\
Final-Recipient: rfc822; nobody@example.com\nAction: failed\nStatus: 5.1.1\n\
Diagnostic-Code: smtp; 550 5.1.1 User unknown\n\
--b\nContent-Type: message/rfc822\n\nSubject: orig\nFrom: t@example.org\n\norig body\n--b--\n",
            &["Final-Recipient: rfc822; nobody@example.com", "550 5.1.1 User unknown"],
            &["orig body", "[text of the attached message]"],
        ),
        (
            "multipart without a boundary",
            b"Subject: x\nContent-Type: multipart/mixed\n\nText here\n",
            &["Text here"],
            &["(no text in this message)"],
        ),
    ]);
}

#[test]
fn html_entities_and_hidden_text() {
    let html = "Subject: x\nContent-Type: text/html; charset=utf-8\n\n\
<div style=\"display: none; max-height:0\">Preheader \u{200c}\u{34f} \u{200c}\u{34f}</div>\
<p>&aring;&oslash;&AElig; &Ntilde;&hearts;&check;&frac12; &le;&minus; &nbsp10 &notit; &#150;&#128;</p>\
<p><a href=\"https://x.example/?a=1&copy=2&amp;b=3\">link</a></p>\
<svg><text>drawing</text></svg><select><option>one</option><option>two</option></select>\n";
    assert_bodies(&[(
        "entities",
        html.as_bytes(),
        &[
            "åøÆ Ñ♥✓½ ≤−",
            "10 ¬it; –€",
            "link (https://x.example/?a=1&copy=2&b=3)",
            "one\ntwo",
        ],
        &["Preheader", "drawing", "&aring", "&#", "&nbsp", "&not"],
    )]);
    // A hidden element that is never closed hides nothing.
    let d = digest(b"Subject: x\nContent-Type: text/html\n\n<div style=display:none>still shown\n");
    assert!(d.body.contains("still shown"), "{:?}", d.body);
}

#[test]
fn a_null_sender_is_said_even_when_the_from_is_made_up() {
    let mut envelope = local_envelope();
    envelope.sender = String::new();
    let raw = b"Subject: returned\n\nx\n";
    let r = Digest::build(raw, raw.len() as u64, &envelope, &opts(4000)).render();
    assert!(
        r.contains("\nFrom: root@host (not in message; local user)\n"),
        "{r}"
    );
    assert!(r.contains("\nEnvelope sender: <> (null sender)\n"), "{r}");
}

#[test]
fn raw_latin1_from_is_read_like_the_subject() {
    let raw = b"From: J\xf6rg <j@example.org>\nSubject: Gr\xfc\xdfe\n\nx\n";
    let d = digest(raw);
    assert_eq!(
        (d.from.as_str(), d.subject.as_str()),
        ("J\u{f6}rg <j@example.org>", "Gr\u{fc}\u{df}e")
    );
}
