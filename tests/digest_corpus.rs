//! The digest over every message of `shared/corpus/mail-parser/{rfc,thirdparty,malformed}`:
//! each one must give a readable, bounded digest (never an error, never a panic), and for
//! many of them the decoded subject, a known body phrase and the attachment names are
//! checked against what the file says.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use mail_parser::{MessageParser, PartType};
use smtp_bridge::digest::{Digest, DigestOptions};
use smtp_bridge::envelope::{Envelope, Origin};

const FOLDERS: [&str; 3] = ["rfc", "thirdparty", "malformed"];
const MAX_BODY_CHARS: usize = 4000;

fn corpus_files() -> Vec<PathBuf> {
    let base = common::shared_dir().join("corpus").join("mail-parser");
    let mut files = Vec::new();
    for folder in FOLDERS {
        let dir = base.join(folder);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path();
            if path.extension().is_some_and(|x| x == "eml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn envelope() -> Envelope {
    Envelope {
        sender: "sender@client.example".into(),
        recipients: vec!["owner@box.example".into()],
        origin: Origin::Smtp {
            peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
            helo: "client.example".into(),
        },
        arrival: UNIX_EPOCH + Duration::from_secs(1_795_529_786),
    }
}

fn build(path: &Path) -> (Digest, String) {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let opts = DigestOptions {
        max_body_chars: MAX_BODY_CHARS,
        hostname: "box.example".into(),
    };
    let digest = Digest::build(&raw, raw.len() as u64, &envelope(), &opts);
    let rendered = digest.render();
    (digest, rendered)
}

/// The part of a rendered digest after the header block.
fn body_section(rendered: &str) -> &str {
    rendered.split_once("\n\n").map_or("", |(_, body)| body)
}

/// A line that is a run of base64, as a MIME encoder writes it (independent of the
/// digest's own filter): at least 40 characters of the base64 alphabet only, with both
/// letter cases and a digit or `+`/`/`.
fn is_base64_run(line: &str) -> bool {
    let b = line.trim_end().as_bytes();
    b.len() >= 40
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
        && b.iter().any(u8::is_ascii_lowercase)
        && b.iter().any(u8::is_ascii_uppercase)
        && b.iter()
            .any(|c| c.is_ascii_digit() || matches!(c, b'+' | b'/'))
}

const HTML_TAGS: [&str; 24] = [
    "html", "head", "body", "div", "p", "br", "span", "a", "b", "i", "img", "table", "tr", "td",
    "font", "style", "script", "ul", "ol", "li", "h1", "h2", "meta", "title",
];

/// An HTML tag such as `<p>`, `<br/>`, `</div>`, `<img src=…>` (case-insensitive).
fn html_tag_in(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    for tag in HTML_TAGS {
        for open in [format!("<{tag}"), format!("</{tag}")] {
            let mut from = 0;
            while let Some(pos) = lower[from..].find(&open) {
                let after = lower[from + pos + open.len()..].chars().next();
                if matches!(after, Some('>' | ' ' | '/' | '\n' | '\t')) {
                    return Some(open);
                }
                from += pos + open.len();
            }
        }
    }
    None
}

/// Whether mail-parser itself finds an HTML part in the message.
fn has_html_part(raw: &[u8]) -> bool {
    MessageParser::default()
        .parse(raw)
        .is_some_and(|m| m.parts.iter().any(|p| matches!(p.body, PartType::Html(_))))
}

#[test]
fn every_corpus_file_gives_a_readable_bounded_digest() {
    let files = corpus_files();
    let mut per_folder: BTreeMap<String, usize> = BTreeMap::new();
    let mut html_sources = 0;
    for path in &files {
        let name = path.display().to_string();
        let (digest, r) = build(path);
        let folder = path
            .parent()
            .and_then(Path::file_name)
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        *per_folder.entry(folder).or_default() += 1;

        assert!(!r.trim().is_empty(), "{name}: empty digest");
        assert!(r.starts_with("Subject: "), "{name}: {r}");
        assert!(
            r.contains("\nFrom: ") && r.contains("\nDate: "),
            "{name}: {r}"
        );
        assert!(
            r.contains("\nArrived via SMTP from 127.0.0.1 (client.example)\n"),
            "{name}: {r}"
        );
        assert!(
            !body_section(&r).trim().is_empty(),
            "{name}: nothing after the headers: {r}"
        );
        assert!(
            r.chars().count() <= MAX_BODY_CHARS + 20_000,
            "{name}: {} chars",
            r.chars().count()
        );
        assert!(
            digest.body.chars().count() <= MAX_BODY_CHARS,
            "{name}: body over the cap"
        );
        assert!(
            !r.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{name}: control characters in {r:?}"
        );
        assert!(!r.contains('\r'), "{name}: CR in digest");
        if let Some(line) = r.lines().find(|l| is_base64_run(l)) {
            panic!("{name}: base64 run {line:?} in {r}");
        }
        for l in r.lines() {
            assert_eq!(l, l.trim_end(), "{name}: trailing whitespace in {l:?}");
        }
        assert!(
            !r.contains("\n\n\n"),
            "{name}: more than one blank line in a row: {r}"
        );

        let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        if has_html_part(&raw) {
            html_sources += 1;
            if let Some(tag) = html_tag_in(body_section(&r)) {
                panic!("{name}: HTML tag {tag:?} in the body of {r}");
            }
        }
        if !digest.from_synthesized {
            assert!(!digest.from.is_empty(), "{name}: empty From");
        }
        for a in &digest.attachments {
            assert!(
                !a.name.is_empty() && a.content_type.contains('/'),
                "{name}: {a:?}"
            );
        }
    }
    // The corpus as shipped: 10 rfc, 20 thirdparty, 23 malformed files, 19 of them with an
    // HTML part. If files are added, these numbers go up, never down.
    assert!(
        per_folder.get("rfc").copied().unwrap_or(0) >= 10,
        "{per_folder:?}"
    );
    assert!(
        per_folder.get("thirdparty").copied().unwrap_or(0) >= 20,
        "{per_folder:?}"
    );
    assert!(
        per_folder.get("malformed").copied().unwrap_or(0) >= 23,
        "{per_folder:?}"
    );
    assert!(html_sources >= 10, "only {html_sources} HTML sources found");
    eprintln!(
        "corpus: {} files {per_folder:?}, {html_sources} with an HTML part",
        files.len()
    );
}

/// What a file's digest must say: exact subject, phrases in the body, attachment names
/// (in order), and phrases in the attachment details (nested messages).
struct Expect {
    file: &'static str,
    subject: &'static str,
    body: &'static [&'static str],
    attachments: &'static [&'static str],
    details: &'static [&'static str],
}

const EXPECTED: &[Expect] = &[
    Expect {
        file: "rfc/000.eml",
        subject: "A multipart example",
        body: &[
            "... Some text appears here ...",
            "explicit versus implicit typing",
        ],
        attachments: &["(unnamed)", "(unnamed)", "(unnamed)", "(unnamed)"],
        details: &["\"(subject in US-ASCII)\""],
    },
    Expect {
        file: "rfc/002.eml",
        subject: "[Fwd: Map of Argentina with Description]",
        body: &["Fire up Air Force One!  We're going South!"],
        attachments: &["(unnamed)"],
        details: &[
            "\"Map of Argentina with Description\" from Bill Clinton <president@whitehouse.gov>",
        ],
    },
    Expect {
        file: "rfc/003.eml",
        subject: "Formatted text mail",
        body: &["... plain text version of message goes here ..."],
        attachments: &["(unnamed)", "(unnamed)"],
        details: &[],
    },
    Expect {
        file: "rfc/004.eml",
        subject: "Internet Digest, volume 42",
        body: &["...Introductory text or table of contents..."],
        attachments: &[],
        details: &[],
    },
    Expect {
        file: "rfc/005.eml",
        subject: "Sample message",
        body: &[
            "This is implicitly typed plain US-ASCII text.",
            "This is explicitly typed plain US-ASCII text.",
        ],
        attachments: &[],
        details: &[],
    },
    Expect {
        file: "rfc/006.eml",
        subject: "Multipart Email Example",
        body: &["Plain text email goes here!"],
        attachments: &[],
        details: &[],
    },
    Expect {
        file: "rfc/008.eml",
        subject: "",
        body: &["This is a message with a base64 encoded attached email"],
        attachments: &["attached_email.eml"],
        details: &["\"HTML test\" from Name <email@example.com>"],
    },
    Expect {
        file: "rfc/009.eml",
        subject: "whatever",
        body: &["Hello"],
        attachments: &["(unnamed)"],
        details: &["\"Hello, this is an elaborate request for you to finally say hello already!\""],
    },
    Expect {
        file: "thirdparty/002.eml",
        subject: "",
        body: &["päivää", "yötä vaan."],
        attachments: &["(unnamed)"],
        details: &[],
    },
    Expect {
        file: "thirdparty/003.eml",
        subject: "",
        body: &["Move black king to queen's bishop", "Move ♚ to ♛'s ♝"],
        attachments: &[],
        details: &[],
    },
    Expect {
        file: "thirdparty/005.eml",
        subject: "",
        body: &["『世界人権宣言』"],
        attachments: &[],
        details: &[],
    },
    Expect {
        file: "thirdparty/006.eml",
        subject: "Hide and seek",
        body: &["Search me, and Find me here"],
        attachments: &["(unnamed)"],
        details: &[],
    },
    Expect {
        file: "thirdparty/010.eml",
        subject: "こんにちは",
        body: &["人権の無視及"],
        attachments: &[],
        details: &[],
    },
    Expect {
        file: "thirdparty/011.eml",
        subject: "small image",
        body: &[],
        attachments: &["01H5HSCoUeEcg6CH.png"],
        details: &[],
    },
    Expect {
        file: "thirdparty/014.eml",
        subject: "[Shapelib] need some help",
        body: &[
            "I am writting my first C application",
            "undefined reference to",
        ],
        attachments: &[],
        details: &[],
    },
    Expect {
        file: "thirdparty/015.eml",
        subject: "Re: (#5290765) Proxmox Shop E-Mails",
        body: &["Vergleicht man die Spam-Scores:", "Beste Grüße"],
        attachments: &["training-mail.txt", "office-reply.txt", "shop-mail.txt"],
        details: &["\"RE: (#5290765) Proxmox Shop E-Mails\" from Proxmox Server Solutions GmbH"],
    },
    Expect {
        file: "thirdparty/016.eml",
        subject: "25 HTML + embedded image",
        body: &["Search for höhö"],
        attachments: &["kigaaldcbanejcbi.png"],
        details: &[],
    },
    Expect {
        file: "thirdparty/017.eml",
        subject: "27 plaintext + (HTML + embedded image)",
        body: &["Search for hähä"],
        attachments: &["kigaaldcbanejcbi.png"],
        details: &[],
    },
    Expect {
        file: "thirdparty/018.eml",
        subject: "29 (HTML + embedded image) + attachment",
        body: &["Search for höhö"],
        attachments: &["kigaaldcbanejcbi.png", "attach2.png"],
        details: &[],
    },
    Expect {
        file: "thirdparty/019.eml",
        subject: "30 plaintext + (HTML + embedded image) + attachment",
        body: &["Search for hähä"],
        attachments: &["kigaaldcbanejcbi.png", "attach2.png"],
        details: &[],
    },
    Expect {
        file: "malformed/002.eml",
        subject: "",
        body: &["body"],
        attachments: &[],
        details: &[],
    },
    Expect {
        file: "malformed/010.eml",
        subject: "",
        body: &["[text of the attached message]", "1"],
        attachments: &["(unnamed)"],
        details: &[],
    },
    Expect {
        file: "malformed/015.eml",
        subject: "Hello world",
        body: &["There was a day\na happy day"],
        attachments: &["signature.asc"],
        details: &[],
    },
    Expect {
        file: "malformed/021.eml",
        subject: "test multipart, related first",
        body: &["áóúäöüß"],
        attachments: &["(unnamed)"],
        details: &[],
    },
    Expect {
        file: "malformed/022.eml",
        subject: "broken rfc822 attachment",
        body: &["hello"],
        attachments: &["broken.eml"],
        details: &[],
    },
];

#[test]
fn known_files_decode_to_known_content() {
    let base = common::shared_dir().join("corpus").join("mail-parser");
    let mut checks = 0usize;
    for e in EXPECTED {
        let (digest, r) = build(&base.join(e.file));
        let file = e.file;
        assert_eq!(digest.subject, e.subject, "{file}: {r}");
        checks += 1;
        let wanted_subject = if e.subject.is_empty() {
            "(no subject)"
        } else {
            e.subject
        };
        assert!(
            r.starts_with(&format!("Subject: {wanted_subject}\n")),
            "{file}: {r}"
        );
        checks += 1;
        for phrase in e.body {
            assert!(
                digest.body.contains(phrase),
                "{file}: {phrase:?} not in {r}"
            );
            checks += 1;
        }
        let names: Vec<&str> = digest.attachments.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, e.attachments, "{file}: {r}");
        checks += 1;
        for name in e.attachments.iter().filter(|n| !n.starts_with('(')) {
            assert!(
                r.contains(&format!("\n- {name} (")),
                "{file}: {name} not listed in {r}"
            );
            checks += 1;
        }
        for detail in e.details {
            assert!(
                digest
                    .attachments
                    .iter()
                    .any(|a| a.detail.as_deref().is_some_and(|d| d.contains(detail))),
                "{file}: {detail:?} not in {:?}",
                digest.attachments
            );
            checks += 1;
        }
    }
    assert!(checks > 100, "only {checks} checks");
    eprintln!(
        "corpus: {} files checked for known content, {checks} checks",
        EXPECTED.len()
    );
}

/// Headers and sizes that need the exact value, not just a phrase.
#[test]
fn known_files_exact_fields() {
    let base = common::shared_dir().join("corpus").join("mail-parser");
    let (d, _) = build(&base.join("thirdparty/014.eml"));
    assert_eq!(d.from, "calpas calpas <calpas2007@yahoo.fr>");
    assert_eq!(d.to, vec!["shapelib@lists.maptools.org".to_string()]);
    assert_eq!(d.date, "Wed, 9 Mar 2011 11:19:45 +0000");

    let (d, r) = build(&base.join("rfc/000.eml"));
    let types: Vec<&str> = d
        .attachments
        .iter()
        .map(|a| a.content_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "audio/basic",
            "image/jpeg",
            "text/enriched",
            "message/rfc822"
        ]
    );
    assert!(r.contains("\nTo: Ned Freed <ned@innosoft.com>\n"), "{r}");

    let (d, r) = build(&base.join("thirdparty/011.eml"));
    assert_eq!(d.attachments[0].content_type, "image/png");
    assert!(
        r.contains("- 01H5HSCoUeEcg6CH.png (image/png, 3.2 KiB)"),
        "{r}"
    );

    // No From in the file: synthesized from the envelope, and said so.
    let (d, r) = build(&base.join("rfc/007.eml"));
    assert!(d.from_synthesized && d.date_synthesized);
    assert!(
        r.contains("\nFrom: sender@client.example (not in message; envelope sender)\n"),
        "{r}"
    );
}

/// Broken variants of every corpus file — cut at many offsets (a message whose end was
/// lost), and with bytes overwritten by a fixed pseudo-random sequence — still give a sane
/// digest. Deterministic and bounded: 64 cuts and 192 mutations per file. The digest
/// survives a panic inside mail-parser (it catches it), so panics are also counted here:
/// none may happen.
#[test]
fn cut_and_mutated_corpus_files_still_give_digests() {
    let opts = DigestOptions {
        max_body_chars: 500,
        hostname: "box.example".into(),
    };
    // xorshift64: a fixed sequence, so a failure reproduces.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous_hook(info);
    }));
    let mut built = 0usize;
    for path in corpus_files() {
        let name = path.display().to_string();
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut variants: Vec<Vec<u8>> = Vec::new();
        for i in 0..64 {
            variants.push(raw[..raw.len() * i / 64].to_vec());
        }
        for _ in 0..192 {
            let mut v = raw.clone();
            if v.is_empty() {
                break;
            }
            for _ in 0..1 + next() % 8 {
                let at = (next() % v.len() as u64) as usize;
                // Mostly structure-breaking bytes: line ends, colons, dashes, NUL, high bytes.
                let bytes = [b'\n', b':', b'-', b'=', 0, 0xff, b'<', b'"'];
                v[at] = bytes[(next() % bytes.len() as u64) as usize];
            }
            variants.push(v);
        }
        for v in &variants {
            let d = Digest::build(v, v.len() as u64, &envelope(), &opts);
            let r = d.render();
            assert!(r.starts_with("Subject: "), "{name}: {r}");
            assert!(d.body.chars().count() <= 500, "{name}: body over the cap");
            assert!(r.chars().count() <= 500 + 20_000, "{name}: digest too long");
            assert!(
                !r.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
                "{name}: control characters in {r:?}"
            );
            built += 1;
        }
    }
    eprintln!("corpus: {built} cut or mutated variants built");
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "panics while building digests"
    );
}
