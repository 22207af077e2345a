//! The SMTP engine fed SMTP-alphabet input: every byte picks a token (`MAIL FROM:`, `<`,
//! CRLF, `BDAT `, a number…), so short inputs reach deep states. The session must keep its
//! contract, and the same input byte at a time must give the same replies and messages.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let input = fuzz_harness::alphabet(rest);
    fuzz_harness::differential(fuzz_harness::config_for(selector), &input, &[]);
});
