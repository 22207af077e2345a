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
