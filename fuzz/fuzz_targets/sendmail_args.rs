//! The sendmail command line: any argv (NUL-separated words; byte 0 picks argv[0] among
//! the names the shim answers to) parses to arguments or to an error, never a panic, and
//! what it parses to is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_bridge::sendmail::args::{parse, Mode};

const NAMES: &[&str] = &[
    "/usr/sbin/sendmail",
    "sendmail",
    "mailq",
    "newaliases",
    "runq",
    "smtpd",
    "rmail",
    "/usr/lib/sendmail",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut argv = vec![NAMES[selector as usize % NAMES.len()].to_string()];
    if !rest.is_empty() {
        argv.extend(
            rest.split(|&b| b == 0)
                .map(|w| String::from_utf8_lossy(w).into_owned()),
        );
    }
    match parse(&argv) {
        Ok(args) => {
            if args.extract_recipients {
                assert_eq!(args.mode, Mode::Deliver, "-t outside delivery mode");
            }
            assert!(
                args.recipients.iter().all(|r| !r.is_empty()),
                "empty recipient from {argv:?}: {args:?}"
            );
        }
        Err(e) => {
            // The message goes to the caller's terminal or cron mail: one printable line.
            let text = e.to_string();
            assert!(!text.chars().any(char::is_control), "{text:?}");
        }
    }
});
