//! Configuration: one TOML file (or the Python original's INI file) -> [`Config`].
//!
//! INTERFACE SKELETON — the types and signatures below are shared by every module; the
//! owner of this module fills in the bodies and may add items, but must not change these.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where both binaries look for the configuration when not told otherwise.
pub const DEFAULT_PATH: &str = "/etc/smtp_bridge.conf";
/// The environment variable through which `sendmail`'s callers can point at another file.
pub const ENV_VAR: &str = "SMTP_BRIDGE_CONFIG";

/// How much is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warning,
    /// Errors, warnings and one line per message event (the default).
    Info,
    /// Everything, including ignored sendmail options and SMTP session traces.
    Debug,
}

/// An address block such as `127.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// The prefix length in bits.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this block. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is
    /// matched as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let _ = ip;
        todo!()
    }
}

/// The effective configuration. Every field has a default ([`Config::default`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `queue`: the bridge URL (default `http://localhost:8003/replies`).
    pub queue: String,
    /// `name`: the `name` sent to the bridge (default: the host name).
    pub name: String,
    /// `hostname`: our name in the SMTP greeting and synthesized headers (default: the host
    /// name).
    pub hostname: String,
    /// `loglevel` (default info).
    pub loglevel: LogLevel,
    /// `listen`: addresses the daemon binds (default `127.0.0.1:25` and `[::1]:25`).
    pub listen: Vec<SocketAddr>,
    /// `allowed_clients` (default `127.0.0.0/8`, `::1/128`).
    pub allowed_clients: Vec<Cidr>,
    /// `username`: whom the daemon becomes after binding (default `nobody`).
    pub username: String,
    /// `group`: the group it becomes (default `nogroup`, or the user's primary group when
    /// there is no such group).
    pub group: String,
    /// `spool_dir` (default `/var/spool/smtp_bridge`).
    pub spool_dir: PathBuf,
    /// `max_message_size` in bytes (default 33554432).
    pub max_message_size: u64,
    /// `max_recipients` per message (default 1000).
    pub max_recipients: usize,
    /// `max_connections` at once (default 100).
    pub max_connections: usize,
    /// `idle_timeout`: seconds without a command before `421 4.4.2` (default 300).
    pub idle_timeout: Duration,
    /// `session_timeout`: total seconds a session may last (default 3600).
    pub session_timeout: Duration,
    /// `max_body_chars`: body characters in a digest before the "not shown" line (default
    /// 4000).
    pub max_body_chars: usize,
    /// `queue_lifetime`: seconds a message is retried before `failed/` (default 432000).
    pub queue_lifetime: Duration,
    /// `bridge_timeout`: total seconds one bridge request may take in the daemon and in
    /// `sendmail -q` (default 30).
    pub bridge_timeout: Duration,
    /// `sendmail_timeout`: total seconds the `sendmail` shim waits for the bridge before it
    /// spools the message instead (default 5).
    pub sendmail_timeout: Duration,
    /// `strict_recipients`: `sendmail` exits 64 like Postfix when a message has no
    /// recipients, instead of forwarding it marked "no recipients" (default false).
    pub strict_recipients: bool,
}

/// Why a configuration could not be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// Occurs when the file cannot be read.
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Occurs when the text does not parse, a key is unknown or a value is bad. The message
    /// names the key and, where known, the line.
    Invalid {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// The 1-based line of the offending key or value, where known.
        line: Option<usize>,
        /// What is wrong, naming the key.
        message: String,
    },
    /// Occurs when the file is writable by users other than its owner (or owned by someone
    /// other than root or the current user), so anyone could redirect the mail.
    Insecure {
        /// The file.
        path: PathBuf,
        /// What is wrong with its ownership or mode.
        message: String,
    },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let _ = f;
        todo!()
    }
}

impl std::error::Error for ConfigError {}

impl Default for Config {
    fn default() -> Self {
        todo!()
    }
}

impl Config {
    /// Parses configuration text: TOML, or the legacy INI form (a `[DEFAULT]` section with
    /// `queue`, `loglevel`, `smtphost`, `smtpport`, `username`, `group`).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let _ = text;
        todo!()
    }

    /// Reads and parses a file, refusing one that others can write.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let _ = path;
        todo!()
    }

    /// What both binaries do at start: `explicit` (from `--config`, or `SMTP_BRIDGE_CONFIG`
    /// for the shim) must exist; without it, [`DEFAULT_PATH`] is read when present and the
    /// defaults are used when it is absent.
    pub fn locate(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let _ = explicit;
        todo!()
    }

    /// The effective settings as TOML, as `smtp_bridge --check-config` prints them.
    pub fn to_toml(&self) -> String {
        todo!()
    }
}
