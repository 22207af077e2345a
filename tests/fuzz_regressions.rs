//! Regression tests for what the fuzz targets in `fuzz/` found: one test per finding, named
//! after the target and the crash artifact's hash, with the input (minimised) that found it.
//! FUZZING.md lists each finding and its fix.

use smtp_bridge::sendmail::intake::Intake;

/// `sendmail_intake`, crash-c3609d54: `Intake::feed` called again after the terminating
/// dot line took one more byte (returned 1) although its contract says nothing more is
/// consumed. The shim stops reading at the dot, so no message was affected; a caller that
/// fed the rest of a buffer would have lost a byte of whatever followed.
#[test]
fn sendmail_intake_c3609d54_nothing_consumed_after_the_dot() {
    for input in [&b"line\r\n.\r\n"[..], b".\n", b"a\n.\r\n"] {
        let mut intake = Intake::new(false);
        let mut out = Vec::new();
        assert_eq!(intake.feed(input, &mut out), input.len());
        assert!(intake.ended());
        let before = out.clone();
        assert_eq!(intake.feed(b"after\n", &mut out), 0, "{input:?}");
        assert_eq!(intake.feed(b".\n", &mut out), 0, "{input:?}");
        assert_eq!(out, before, "bytes emitted after the end");
    }
}

/// `sendmail_args`, crash-c6959c82: an unsupported mode option glued to more text
/// (`-bt2\n\n…`) was echoed raw in the usage error, so a control character in argv reached
/// the caller's terminal (or cron mail) as a line break or an escape sequence. The option is
/// now shown escaped; the error stays one line of printable text.
#[test]
fn sendmail_args_c6959c82_usage_error_is_one_printable_line() {
    use smtp_bridge::sendmail::args::parse;
    for option in ["-bt2\n\nX", "-bD\x1b[2J", "-bz\r", "-bP\u{85}"] {
        let argv = vec!["sendmail".to_string(), option.to_string()];
        let error = parse(&argv).expect_err(option).to_string();
        assert!(
            !error.chars().any(char::is_control),
            "{option:?} -> {error:?}"
        );
        assert!(error.ends_with(": unsupported mode"), "{error:?}");
    }
    let plain = parse(&["sendmail".to_string(), "-bt".to_string()]).unwrap_err();
    assert_eq!(plain.to_string(), "-bt: unsupported mode");
}
