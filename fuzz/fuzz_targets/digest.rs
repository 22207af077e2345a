//! The digest of arbitrary message bytes: it is always built (never a panic, never a stack
//! overflow), and the rendered text is what the owner can read — it starts with the
//! Subject, names From and Date, is bounded, and has no control characters.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use smtp_bridge::digest::{Digest, DigestOptions, MAX_PARSE_BYTES};
use smtp_bridge::envelope::{Envelope, Origin};

const MAX_BODY_CHARS: usize = 4000;

fuzz_target!(|data: &[u8]| {
    let envelope = Envelope {
        sender: "sender@example.org".to_string(),
        recipients: vec!["root".to_string(), "hidden@example.org".to_string()],
        origin: Origin::Smtp {
            peer: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000),
            helo: "client.example".to_string(),
        },
        arrival: UNIX_EPOCH + Duration::from_secs(1_795_000_000),
    };
    let opts = DigestOptions {
        max_body_chars: MAX_BODY_CHARS,
        hostname: "host".to_string(),
    };
    let digest = Digest::build(data, data.len() as u64, &envelope, &opts);
    assert!(digest.bytes_parsed <= MAX_PARSE_BYTES as u64);
    assert!(
        digest.body.chars().count() <= MAX_BODY_CHARS,
        "body over the cap"
    );
    let rendered = digest.render();
    assert!(rendered.starts_with("Subject: "), "{rendered:?}");
    assert!(
        rendered.contains("\nFrom: ") && rendered.contains("\nDate: "),
        "{rendered:?}"
    );
    assert!(
        rendered.chars().count() <= MAX_BODY_CHARS + 40_000,
        "rendered digest of {} chars",
        rendered.chars().count()
    );
    assert!(
        !rendered
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "control character in {rendered:?}"
    );
});
