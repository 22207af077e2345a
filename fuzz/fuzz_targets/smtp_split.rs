//! Differential check of the SMTP engine: the same input in one chunk, cut at random split
//! points, and byte at a time must give identical replies, messages and data. Layout: byte
//! 0 picks the limits (bit 0) and whether the rest is raw or SMTP-alphabet (bit 1); byte 1
//! says how many seed bytes follow (each one chunk length); the rest is the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [selector, seed_len, rest @ ..] = data else {
        return;
    };
    let seed_len = (*seed_len as usize % 16).min(rest.len());
    let (seed, body) = rest.split_at(seed_len);
    let input = if selector & 2 == 0 {
        body.to_vec()
    } else {
        fuzz_harness::alphabet(body)
    };
    fuzz_harness::differential(fuzz_harness::config_for(*selector), &input, seed);
});
