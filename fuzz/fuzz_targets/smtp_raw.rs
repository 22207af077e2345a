//! The SMTP engine fed raw bytes in one chunk: the driving contract holds, replies are
//! well-formed and in proportion to the input. The first byte picks small or default limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let transcript = fuzz_harness::drive(fuzz_harness::config_for(selector), [input]);
    fuzz_harness::check_replies(&transcript.output, input);
});
