//! The sendmail stdin filter (`sendmail::intake`): any bytes, cut at any points, give the
//! same message as in one piece; it never grows the message; after the terminating dot it
//! consumes nothing; and `-t` can read recipients from whatever comes out. Byte 0: bit 0 is
//! `-i`; byte 1 says how many seed bytes (chunk lengths) follow; the rest is stdin.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_bridge::sendmail::intake::header_recipients;

fuzz_target!(|data: &[u8]| {
    let [selector, seed_len, rest @ ..] = data else {
        return;
    };
    let ignore_dots = selector & 1 == 1;
    let seed_len = (*seed_len as usize % 16).min(rest.len());
    let (seed, input) = rest.split_at(seed_len);
    let whole = fuzz_harness::filter(ignore_dots, [input]);
    assert!(whole.out.len() <= input.len(), "the filter added bytes");
    if ignore_dots {
        assert!(!whole.ended, "-i, yet a dot line ended the input");
        assert_eq!(whole.consumed, input.len());
    }
    let split = fuzz_harness::filter(ignore_dots, fuzz_harness::split(input, seed));
    assert_eq!(whole, split, "split at {seed:?} differs from one piece");
    for recipient in header_recipients(&whole.out) {
        assert!(!recipient.is_empty(), "empty -t recipient");
    }
});
