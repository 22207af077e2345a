//! Exit codes from `sysexits.h`, the convention every sendmail caller understands.

/// Successful termination.
pub const EX_OK: u8 = 0;
/// The command was used incorrectly (bad option, no recipients under strict rules).
pub const EX_USAGE: u8 = 64;
/// The input data was incorrect (stdin could not be read, message too large).
pub const EX_DATAERR: u8 = 65;
/// An input file did not exist or was not readable.
pub const EX_NOINPUT: u8 = 66;
/// A service is unavailable.
pub const EX_UNAVAILABLE: u8 = 69;
/// An internal software error was detected.
pub const EX_SOFTWARE: u8 = 70;
/// An operating system error (cannot fork, unknown user, cannot bind).
pub const EX_OSERR: u8 = 71;
/// A (user specified) output file cannot be created.
pub const EX_CANTCREAT: u8 = 73;
/// An error occurred while doing I/O on some file.
pub const EX_IOERR: u8 = 74;
/// Temporary failure: the caller should try again later (we could not even spool).
pub const EX_TEMPFAIL: u8 = 75;
/// Insufficient permission.
pub const EX_NOPERM: u8 = 77;
/// Something was found in an unconfigured or misconfigured state.
pub const EX_CONFIG: u8 = 78;
