//! Logging through the `log` facade to syslog (facility mail, ident `smtp_bridge`), falling
//! back to stderr where there is no `/dev/log`.
//!
//! INTERFACE SKELETON — owned by the config/logging helper.
//!
//! Conventions for every module: one line per event; message events carry the queue ID first,
//! Postfix-like: `1A2B3C: from=<root@host>, size=1234, nrcpt=2`,
//! `1A2B3C: to=<a@b>, status=sent (bridge answered 200)`,
//! `1A2B3C: status=deferred (connection refused)`. Never a message body.

use crate::config::LogLevel;

/// Installs the global logger. `ident` is the syslog tag (`smtp_bridge` for the daemon,
/// `sendmail` for the shim). With `stderr_too`, lines also go to stderr (the daemon in the
/// foreground with `--loglevel debug`, tests). Safe to call more than once: later calls only
/// change the level.
pub fn init(ident: &str, level: LogLevel, stderr_too: bool) {
    let _ = (ident, level, stderr_too);
    todo!()
}

/// Changes the level of the installed logger (SIGHUP reload).
pub fn set_level(level: LogLevel) {
    let _ = level;
    todo!()
}
