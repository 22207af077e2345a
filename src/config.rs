//! Configuration: turns one TOML file (or the Python original's INI file) into a validated
//! [`Config`], where every key has a documented default and every mistake is reported with
//! the key and the line it is on.
//!
//! Two formats are read:
//!
//! - **TOML**, the documented form: every key of [`Config`], integers for sizes and counts,
//!   integer seconds for durations, arrays of strings for `listen` and `allowed_clients`.
//! - **The legacy INI form** of the Python `smtp_bridge.py`: a `[DEFAULT]` section of
//!   `key = value` lines with `#` or `;` comments. Its `smtphost` and `smtpport` become the
//!   single `listen` address; `loglevel` takes Python's names (`INFO`, `CRITICAL`, …) in any
//!   case. The other keys of the TOML form are accepted there too, lists comma-separated.
//!
//! A file is INI when its first line that is not blank or a comment is `[DEFAULT]`; a TOML
//! file can never start that way, since `DEFAULT` is not one of its keys.

use std::fmt;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// Where both binaries look for the configuration when not told otherwise.
pub const DEFAULT_PATH: &str = "/etc/smtp_bridge.conf";
/// The environment variable through which `sendmail`'s callers can point at another file.
pub const ENV_VAR: &str = "SMTP_BRIDGE_CONFIG";

/// The longest duration any key accepts (ten years, in seconds). Larger values are surely a
/// typo, and other modules add these durations to the clock, which must not overflow.
pub const MAX_DURATION_SECS: i64 = 10 * 365 * 24 * 3600;

/// The largest configuration file read, in bytes; a real one is a few hundred.
pub const MAX_FILE_SIZE: u64 = 1 << 20;

/// Every key of the TOML form, in the order `to_toml` prints them. Tests check that the
/// example file and the manual page mention each one.
pub const KEYS: &[&str] = &[
    "queue",
    "name",
    "hostname",
    "banner",
    "loglevel",
    "listen",
    "allowed_clients",
    "username",
    "group",
    "spool_dir",
    "spool_sync",
    "max_message_size",
    "max_recipients",
    "max_connections",
    "idle_timeout",
    "session_timeout",
    "max_body_chars",
    "queue_lifetime",
    "bridge_timeout",
    "sendmail_timeout",
    "strict_recipients",
];

/// The default `banner`: `220 host.example ESMTP`, as Postfix's greeting without its name.
pub const DEFAULT_BANNER: &str = "$hostname ESMTP";

/// The keys only the legacy INI form knows; they become `listen`.
const INI_ONLY_KEYS: &[&str] = &["smtphost", "smtpport"];

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

impl LogLevel {
    /// The name used in the configuration file and in `--loglevel`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warning => "warning",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }

    /// The matching filter of the `log` crate.
    pub fn to_level_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warning => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
        }
    }

    /// Parses a level name in any case: `error`, `warning` (or `warn`), `info`, `debug`, and
    /// Python's `critical`, which the original's files may carry and which means errors only.
    fn from_name(name: &str) -> Option<LogLevel> {
        match name.to_ascii_lowercase().as_str() {
            "error" | "critical" => Some(LogLevel::Error),
            "warning" | "warn" => Some(LogLevel::Warning),
            "info" => Some(LogLevel::Info),
            "debug" => Some(LogLevel::Debug),
            _ => None,
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogLevel {
    type Err = ConfigError;

    /// Accepts the names [`LogLevel::as_str`] gives, `warn`, and Python's `critical`, in any
    /// case (so `--loglevel` and the file agree).
    fn from_str(s: &str) -> Result<LogLevel, ConfigError> {
        LogLevel::from_name(s).ok_or_else(|| ConfigError::Invalid {
            path: None,
            line: None,
            message: format!("`loglevel` must be one of error, warning, info, debug (got {s:?})"),
        })
    }
}

/// How the daemon makes a batch of accepted messages durable before their `250` (the key
/// `spool_sync`). Every mode fsyncs the `queue/` directory after the renames; they differ in
/// how the files' data reaches the disk first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolSync {
    /// `file`: one fdatasync per message file, in parallel threads, as Postfix does.
    File,
    /// `filesystem`: one `syncfs(2)` of the spool's file system for the whole batch. Cheaper
    /// per message, but it also writes out every other program's unwritten data on that file
    /// system, so a batch can wait behind someone else's large write.
    Filesystem,
    /// `auto` (the default): `filesystem` for a batch while the system holds little unwritten
    /// data (so the `syncfs` cannot wait behind much), `file` otherwise.
    Auto,
}

impl SpoolSync {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            SpoolSync::File => "file",
            SpoolSync::Filesystem => "filesystem",
            SpoolSync::Auto => "auto",
        }
    }

    fn from_name(name: &str) -> Option<SpoolSync> {
        match name.to_ascii_lowercase().as_str() {
            "file" => Some(SpoolSync::File),
            "filesystem" => Some(SpoolSync::Filesystem),
            "auto" => Some(SpoolSync::Auto),
            _ => None,
        }
    }
}

impl fmt::Display for SpoolSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
        // A dual-stack listener on `[::]` reports IPv4 peers as `::ffff:a.b.c.d`; compare
        // them (and blocks written that way) as the IPv4 addresses they are.
        let (net, prefix) = match self.addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if self.prefix >= 96 => (IpAddr::V4(v4), self.prefix - 96),
                _ => (self.addr, self.prefix),
            },
            IpAddr::V4(_) => (self.addr, self.prefix),
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        match (net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = ConfigError;

    /// Parses `address/prefix`; a bare address is a block of one (`/32` or `/128`).
    fn from_str(s: &str) -> Result<Cidr, ConfigError> {
        parse_cidr(s).map_err(|message| ConfigError::Invalid {
            path: None,
            line: None,
            message,
        })
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr_text, prefix_text) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr_text
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an address block such as 127.0.0.0/8 or ::1/128"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix_text {
        None => max,
        Some(p) => match p.trim().parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{s:?} has a prefix length that is not 0 to {max}")),
        },
    };
    Ok(Cidr { addr, prefix })
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
    /// `banner`: the text of the SMTP greeting after `220 `, `$hostname` replaced by
    /// `hostname` (default `$hostname ESMTP`).
    pub banner: String,
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
    /// `spool_sync`: how a batch of accepted messages is made durable (default auto).
    pub spool_sync: SpoolSync,
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

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The cause is part of the line too: most callers print only `{}`, and "cannot
            // read" alone does not say whether the file is missing or unreadable.
            ConfigError::Io { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ConfigError::Invalid {
                path,
                line,
                message,
            } => {
                match path {
                    Some(p) => write!(f, "{}", p.display())?,
                    None => f.write_str("configuration")?,
                }
                if let Some(n) = line {
                    write!(f, " line {n}")?;
                }
                write!(f, ": {message}")
            }
            ConfigError::Insecure { path, message } => {
                write!(f, "refusing {}: {message}", path.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The host name as the kernel knows it, or `localhost` when it cannot be had or would not
/// survive an SMTP greeting.
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| check_hostname(h).is_ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl Default for Config {
    fn default() -> Self {
        let host = host_name();
        Config {
            queue: "http://localhost:8003/replies".to_owned(),
            name: host.clone(),
            hostname: host,
            banner: DEFAULT_BANNER.to_owned(),
            loglevel: LogLevel::Info,
            listen: vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 25),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 25),
            ],
            allowed_clients: vec![
                Cidr {
                    addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
                    prefix: 8,
                },
                Cidr {
                    addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    prefix: 128,
                },
            ],
            username: "nobody".to_owned(),
            group: "nogroup".to_owned(),
            spool_dir: PathBuf::from("/var/spool/smtp_bridge"),
            spool_sync: SpoolSync::Auto,
            max_message_size: 33_554_432,
            max_recipients: 1000,
            max_connections: 100,
            idle_timeout: Duration::from_secs(300),
            session_timeout: Duration::from_secs(3600),
            max_body_chars: 4000,
            queue_lifetime: Duration::from_secs(432_000),
            bridge_timeout: Duration::from_secs(30),
            sendmail_timeout: Duration::from_secs(5),
            strict_recipients: false,
        }
    }
}

/// The TOML form as serde sees it. Every value is taken as a spanned [`toml::Value`] so that
/// the type checks below can name the key and the line, which serde's own messages
/// ("invalid type: string, expected u64") do not.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToml {
    queue: Option<Spanned<toml::Value>>,
    name: Option<Spanned<toml::Value>>,
    hostname: Option<Spanned<toml::Value>>,
    banner: Option<Spanned<toml::Value>>,
    loglevel: Option<Spanned<toml::Value>>,
    listen: Option<Spanned<toml::Value>>,
    allowed_clients: Option<Spanned<toml::Value>>,
    username: Option<Spanned<toml::Value>>,
    group: Option<Spanned<toml::Value>>,
    spool_dir: Option<Spanned<toml::Value>>,
    spool_sync: Option<Spanned<toml::Value>>,
    max_message_size: Option<Spanned<toml::Value>>,
    max_recipients: Option<Spanned<toml::Value>>,
    max_connections: Option<Spanned<toml::Value>>,
    idle_timeout: Option<Spanned<toml::Value>>,
    session_timeout: Option<Spanned<toml::Value>>,
    max_body_chars: Option<Spanned<toml::Value>>,
    queue_lifetime: Option<Spanned<toml::Value>>,
    bridge_timeout: Option<Spanned<toml::Value>>,
    sendmail_timeout: Option<Spanned<toml::Value>>,
    strict_recipients: Option<Spanned<toml::Value>>,
}

impl RawToml {
    /// The keys that were set, with their values, in [`KEYS`] order.
    fn into_entries(self) -> Vec<(&'static str, Spanned<toml::Value>)> {
        let all = [
            ("queue", self.queue),
            ("name", self.name),
            ("hostname", self.hostname),
            ("banner", self.banner),
            ("loglevel", self.loglevel),
            ("listen", self.listen),
            ("allowed_clients", self.allowed_clients),
            ("username", self.username),
            ("group", self.group),
            ("spool_dir", self.spool_dir),
            ("spool_sync", self.spool_sync),
            ("max_message_size", self.max_message_size),
            ("max_recipients", self.max_recipients),
            ("max_connections", self.max_connections),
            ("idle_timeout", self.idle_timeout),
            ("session_timeout", self.session_timeout),
            ("max_body_chars", self.max_body_chars),
            ("queue_lifetime", self.queue_lifetime),
            ("bridge_timeout", self.bridge_timeout),
            ("sendmail_timeout", self.sendmail_timeout),
            ("strict_recipients", self.strict_recipients),
        ];
        all.into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }
}

/// One raw value, from either format.
#[derive(Clone, Copy)]
enum Val<'a> {
    /// A typed TOML value.
    Toml(&'a toml::Value),
    /// The text after `=` on an INI line (already trimmed and unquoted).
    Ini(&'a str),
}

impl Val<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Val::Toml(v) => v.type_str(),
            Val::Ini(_) => "string",
        }
    }
}

fn want_string(key: &str, v: Val<'_>) -> Result<String, String> {
    match v {
        Val::Toml(toml::Value::String(s)) => Ok(s.clone()),
        Val::Ini(s) => Ok(s.to_owned()),
        other => Err(format!(
            "`{key}` must be a string, not {}",
            article(other.type_name())
        )),
    }
}

fn want_int(key: &str, v: Val<'_>) -> Result<i64, String> {
    match v {
        Val::Toml(toml::Value::Integer(n)) => Ok(*n),
        Val::Ini(s) => s
            .parse::<i64>()
            .map_err(|_| format!("`{key}` must be a whole number (got {s:?})")),
        other => Err(format!(
            "`{key}` must be a whole number, not {}",
            article(other.type_name())
        )),
    }
}

fn want_bool(key: &str, v: Val<'_>) -> Result<bool, String> {
    match v {
        Val::Toml(toml::Value::Boolean(b)) => Ok(*b),
        // The spellings Python's configparser.getboolean() accepts.
        Val::Ini(s) => match s.to_ascii_lowercase().as_str() {
            "1" | "yes" | "true" | "on" => Ok(true),
            "0" | "no" | "false" | "off" => Ok(false),
            _ => Err(format!("`{key}` must be true or false (got {s:?})")),
        },
        other => Err(format!(
            "`{key}` must be true or false, not {}",
            article(other.type_name())
        )),
    }
}

/// An array of strings; a single string is accepted as a list of one. In INI, items are
/// separated by commas or white space.
fn want_list(key: &str, v: Val<'_>) -> Result<Vec<String>, String> {
    match v {
        Val::Toml(toml::Value::String(s)) => Ok(vec![s.clone()]),
        Val::Toml(toml::Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "`{key}` must be a list of strings, but holds {}",
                    article(other.type_str())
                )),
            })
            .collect(),
        Val::Ini(s) => Ok(s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()),
        Val::Toml(other) => Err(format!(
            "`{key}` must be a list of strings, not {}",
            article(other.type_str())
        )),
    }
}

fn article(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

fn positive(key: &str, n: i64) -> Result<i64, String> {
    if n > 0 {
        Ok(n)
    } else {
        Err(format!("`{key}` must be greater than 0 (got {n})"))
    }
}

fn want_usize(key: &str, v: Val<'_>) -> Result<usize, String> {
    let n = positive(key, want_int(key, v)?)?;
    usize::try_from(n).map_err(|_| format!("`{key}` is too large (got {n})"))
}

fn want_seconds(key: &str, v: Val<'_>) -> Result<Duration, String> {
    let n = positive(key, want_int(key, v)?)?;
    if n > MAX_DURATION_SECS {
        return Err(format!(
            "`{key}` is in seconds and must be at most {MAX_DURATION_SECS} (got {n})"
        ));
    }
    // `n` is positive here, so the conversion cannot lose anything.
    Ok(Duration::from_secs(n.unsigned_abs()))
}

/// A name that goes into the SMTP greeting and headers: no white space or control characters
/// (which would let a value break the protocol line), not empty, not absurdly long.
fn check_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > 253 {
        return Err(format!("must be 1 to 253 characters (got {h:?})"));
    }
    if h.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "must not contain spaces or control characters (got {h:?})"
        ));
    }
    Ok(())
}

/// The greeting's text: one line of printable ASCII that starts with the server's name, as
/// RFC 5321 §4.2 wants of a greeting (and Postfix of its `smtpd_banner`).
fn check_banner(b: &str) -> Result<(), String> {
    if !b.starts_with("$hostname") {
        return Err(format!(
            "`banner` must start with $hostname: a greeting names the server first (got {b:?})"
        ));
    }
    if b.len() > 200 || !b.bytes().all(|c| (0x20..0x7f).contains(&c)) {
        return Err(format!(
            "`banner` must be at most 200 printable ASCII characters (got {b:?})"
        ));
    }
    Ok(())
}

impl Config {
    /// The greeting's text, `banner` with `$hostname` replaced.
    pub fn greeting(&self) -> String {
        self.banner.replace("$hostname", &self.hostname)
    }
}

fn check_url(key: &str, url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"));
    match rest {
        None => Err(format!(
            "`{key}` must be an http:// or https:// URL (got {url:?})"
        )),
        Some(r) if r.is_empty() || r.starts_with('/') => {
            Err(format!("`{key}` has no host (got {url:?})"))
        }
        Some(_) if url.chars().any(|c| c.is_whitespace() || c.is_control()) => Err(format!(
            "`{key}` must not contain spaces or control characters (got {url:?})"
        )),
        Some(_) => check_url_syntax(key, url),
    }
}

/// What the HTTP client will parse: a URL it refuses, or a port out of range (which it
/// would report at every attempt as a refused connection), is a configuration error now.
fn check_url_syntax(key: &str, url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("`{key}` is not a valid URL: {e} (got {url:?})"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{key}` has no host (got {url:?})"))?;
    let host_port = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, h)| h);
    // An empty port (`http://h:/x`) means the scheme's, as RFC 3986 says.
    if let Some((_, port)) = host_port
        .rsplit_once(':')
        .filter(|(_, p)| !p.is_empty() && !p.contains(']'))
    {
        if !matches!(port.parse::<u16>(), Ok(1..)) {
            return Err(format!(
                "`{key}` has port {port:?}, which is not 1 to 65535 (got {url:?})"
            ));
        }
    }
    Ok(())
}

/// A user or group name: handed to getpwnam/getgrnam, so no separators or white space.
fn check_account(key: &str, s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 64
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/')
    {
        return Err(format!(
            "`{key}` must be a user or group name, without spaces, `:` or `/` (got {s:?})"
        ));
    }
    Ok(())
}

/// Sets one key. The error message names the key; the caller adds the line.
fn apply(config: &mut Config, key: &str, v: Val<'_>) -> Result<(), String> {
    match key {
        "queue" => {
            let url = want_string(key, v)?;
            check_url(key, &url)?;
            config.queue = url;
        }
        "name" => {
            let name = want_string(key, v)?;
            if name.trim().is_empty() || name.chars().count() > 255 {
                return Err(format!("`name` must be 1 to 255 characters (got {name:?})"));
            }
            if name.chars().any(char::is_control) {
                return Err(format!(
                    "`name` must not contain control characters (got {name:?})"
                ));
            }
            config.name = name;
        }
        "hostname" => {
            let h = want_string(key, v)?;
            check_hostname(&h).map_err(|e| format!("`hostname` {e}"))?;
            config.hostname = h;
        }
        "banner" => {
            let b = want_string(key, v)?;
            check_banner(&b)?;
            config.banner = b;
        }
        "loglevel" => {
            let s = want_string(key, v)?;
            config.loglevel = LogLevel::from_name(s.trim()).ok_or_else(|| {
                format!("`loglevel` must be one of error, warning, info, debug (got {s:?})")
            })?;
        }
        "listen" => {
            let items = want_list(key, v)?;
            if items.is_empty() {
                return Err("`listen` must name at least one address".to_owned());
            }
            let mut addrs = Vec::with_capacity(items.len());
            for item in items {
                let addr: SocketAddr = item.trim().parse().map_err(|_| {
                    format!(
                        "`listen` holds {item:?}, which is not an address and port such as \
                         \"127.0.0.1:25\" or \"[::1]:25\""
                    )
                })?;
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
            config.listen = addrs;
        }
        "allowed_clients" => {
            let items = want_list(key, v)?;
            if items.is_empty() {
                return Err("`allowed_clients` must name at least one address block \
                     (\"0.0.0.0/0\" and \"::/0\" allow everyone)"
                    .to_owned());
            }
            config.allowed_clients = items
                .iter()
                .map(|item| parse_cidr(item.trim()).map_err(|e| format!("`allowed_clients`: {e}")))
                .collect::<Result<_, _>>()?;
        }
        "username" => {
            let s = want_string(key, v)?;
            check_account(key, &s)?;
            config.username = s;
        }
        "group" => {
            let s = want_string(key, v)?;
            check_account(key, &s)?;
            config.group = s;
        }
        "spool_dir" => {
            let s = want_string(key, v)?;
            if !s.starts_with('/') {
                return Err(format!("`spool_dir` must be an absolute path (got {s:?})"));
            }
            config.spool_dir = PathBuf::from(s);
        }
        "spool_sync" => {
            let s = want_string(key, v)?;
            config.spool_sync = SpoolSync::from_name(s.trim()).ok_or_else(|| {
                format!("`spool_sync` must be one of auto, file, filesystem (got {s:?})")
            })?;
        }
        "max_message_size" => {
            let n = positive(key, want_int(key, v)?)?;
            config.max_message_size = n.unsigned_abs();
        }
        "max_recipients" => config.max_recipients = want_usize(key, v)?,
        "max_connections" => config.max_connections = want_usize(key, v)?,
        "max_body_chars" => config.max_body_chars = want_usize(key, v)?,
        "idle_timeout" => config.idle_timeout = want_seconds(key, v)?,
        "session_timeout" => config.session_timeout = want_seconds(key, v)?,
        "queue_lifetime" => config.queue_lifetime = want_seconds(key, v)?,
        "bridge_timeout" => config.bridge_timeout = want_seconds(key, v)?,
        "sendmail_timeout" => config.sendmail_timeout = want_seconds(key, v)?,
        "strict_recipients" => config.strict_recipients = want_bool(key, v)?,
        other => return Err(format!("unknown key `{other}`")),
    }
    Ok(())
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn invalid(line: Option<usize>, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: None,
        line,
        message,
    }
}

/// Whether the text is the legacy INI form: its first line that is not blank or a comment is
/// the `[DEFAULT]` section header.
fn is_legacy_ini(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .is_some_and(|l| l.eq_ignore_ascii_case("[default]"))
}

/// Turns a toml error into one that names the key where toml's message does not.
fn toml_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let line = err.span().map(|s| line_of(text, s.start));
    // serde says "field"; the documentation and the rest of our messages say "key".
    let mut message = err
        .message()
        .trim()
        .replace('\n', " ")
        .replace("unknown field", "unknown key");
    if !message.contains('`') {
        // Syntax errors ("invalid string") say nothing of the key; the line usually does.
        let key = line
            .and_then(|n| text.lines().nth(n - 1))
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim().trim_matches('"').trim_matches('\''))
            .filter(|k| !k.is_empty() && !k.starts_with('['));
        if let Some(k) = key {
            message = format!("`{k}`: {message}");
        }
    }
    invalid(line, message)
}

fn parse_toml(text: &str) -> Result<Config, ConfigError> {
    let raw: RawToml = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let mut config = Config::default();
    for (key, value) in raw.into_entries() {
        let line = line_of(text, value.span().start);
        apply(&mut config, key, Val::Toml(value.get_ref())).map_err(|m| invalid(Some(line), m))?;
    }
    Ok(config)
}

/// Reads the Python original's file as its `configparser` did: `key = value` or
/// `key: value`, keys in any case, `#` and `;` full-line comments, values taken verbatim
/// (but a pair of surrounding quotes is dropped, which the original would have choked on).
fn parse_ini(text: &str) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    let mut seen: Vec<String> = Vec::new();
    let mut smtphost: Option<(String, usize)> = None;
    let mut smtpport: Option<(u16, usize)> = None;
    let mut listen_line: Option<usize> = None;

    for (index, raw_line) in text.lines().enumerate() {
        let n = index + 1;
        let trimmed = raw_line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if trimmed.starts_with('[') {
            if trimmed.eq_ignore_ascii_case("[default]") {
                continue;
            }
            return Err(invalid(
                Some(n),
                format!("section {trimmed} is not read: put every key under [DEFAULT]"),
            ));
        }
        if raw_line.starts_with(|c: char| c.is_whitespace()) {
            return Err(invalid(
                Some(n),
                "values continued on an indented line are not supported".to_owned(),
            ));
        }
        let sep = raw_line.find(['=', ':']).ok_or_else(|| {
            invalid(
                Some(n),
                format!("expected `key = value`, found {trimmed:?}"),
            )
        })?;
        let key = raw_line[..sep].trim().to_ascii_lowercase();
        let mut value = raw_line[sep + 1..].trim();
        if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            value = &value[1..value.len() - 1];
        }
        // configparser's interpolation made `%%` the way to write a `%` (in a URL's
        // percent-escapes, say); the original read the value with it undone.
        let unescaped = value.replace("%%", "%");
        let value = unescaped.as_str();
        if key.is_empty() {
            return Err(invalid(
                Some(n),
                format!("a line without a key: {trimmed:?}"),
            ));
        }
        if seen.contains(&key) {
            return Err(invalid(Some(n), format!("`{key}` is set twice")));
        }
        seen.push(key.clone());
        match key.as_str() {
            "smtphost" => smtphost = Some((value.to_owned(), n)),
            "smtpport" => {
                let port = value
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| {
                        invalid(
                            Some(n),
                            format!("`smtpport` must be a port number 1 to 65535 (got {value:?})"),
                        )
                    })?;
                smtpport = Some((port, n));
            }
            k if KEYS.contains(&k) => {
                if k == "listen" {
                    listen_line = Some(n);
                }
                apply(&mut config, k, Val::Ini(value)).map_err(|m| invalid(Some(n), m))?;
            }
            k => {
                return Err(invalid(
                    Some(n),
                    format!(
                        "unknown key `{k}`, expected one of {}",
                        KEYS.iter()
                            .chain(INI_ONLY_KEYS)
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        }
    }

    if smtphost.is_some() || smtpport.is_some() {
        let key_line = smtphost.as_ref().map(|h| h.1).or(smtpport.map(|p| p.1));
        if let Some(l) = listen_line {
            return Err(invalid(
                Some(l),
                "`listen` and `smtphost`/`smtpport` both set: use one or the other".to_owned(),
            ));
        }
        // The original's defaults for whichever of the two is missing.
        let port = smtpport.map_or(25, |p| p.0);
        let host = smtphost.map_or_else(|| "localhost".to_owned(), |h| h.0);
        config.listen = resolve_listen(&host, port).map_err(|m| invalid(key_line, m))?;
    }
    Ok(config)
}

/// What `smtphost` and `smtpport` meant to the original (it bound whatever the name
/// resolved to): an address literal is itself, `localhost` is both loopback addresses
/// (whatever /etc/hosts says, so a box without `::1` in it still gets the documented
/// default), an empty host is every IPv4 address, any other name is resolved.
fn resolve_listen(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
        ]);
    }
    if host.is_empty() {
        return Ok(vec![SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port,
        )]);
    }
    let resolved = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("`smtphost` {host:?} cannot be resolved: {e}"))?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in resolved {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err(format!("`smtphost` {host:?} resolves to no address"));
    }
    Ok(addrs)
}

/// A TOML string literal (basic string, escaped as the toml crate does).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn toml_list<T: fmt::Display>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(|i| toml_string(&i.to_string())).collect();
    format!("[{}]", inner.join(", "))
}

impl Config {
    /// Parses configuration text: TOML, or the legacy INI form (a `[DEFAULT]` section with
    /// `queue`, `loglevel`, `smtphost`, `smtpport`, `username`, `group`).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if is_legacy_ini(text) {
            parse_ini(text)
        } else {
            parse_toml(text)
        }
    }

    /// Reads and parses a file, refusing one that others can write.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let io_err = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        check_ownership(path, meta.uid(), meta.mode())?;
        let mut text = String::new();
        let file = std::fs::File::open(path).map_err(io_err)?;
        // One byte more than the limit tells a file at the limit from one beyond it, even
        // when the file grew after the metadata was read.
        file.take(MAX_FILE_SIZE + 1)
            .read_to_string(&mut text)
            .map_err(io_err)?;
        if text.len() as u64 > MAX_FILE_SIZE {
            return Err(ConfigError::Invalid {
                path: Some(path.to_owned()),
                line: None,
                message: format!("the file is larger than {MAX_FILE_SIZE} bytes"),
            });
        }
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Invalid { line, message, .. } => ConfigError::Invalid {
                path: Some(path.to_owned()),
                line,
                message,
            },
            other => other,
        })
    }

    /// What both binaries do at start: `explicit` (from `--config`, or `SMTP_BRIDGE_CONFIG`
    /// for the shim) must exist; without it, [`DEFAULT_PATH`] is read when present and the
    /// defaults are used when it is absent.
    pub fn locate(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        match explicit {
            Some(path) => Config::load(path),
            None => match Config::load(Path::new(DEFAULT_PATH)) {
                Err(ConfigError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(Config::default())
                }
                other => other,
            },
        }
    }

    /// What `sendmail` falls back to when the configuration cannot be used (a typo, a bad
    /// mode, a file the caller may not read): the defaults, with no bridge (`queue` empty:
    /// nothing is sent anywhere the broken file may have meant), and the spool the file
    /// names when it is trustworthy enough to have been parsed, so that the message waits
    /// in the maildrop for the running daemon, which keeps its last good configuration,
    /// instead of being refused.
    pub fn rescue(error: &ConfigError) -> Config {
        let mut config = Config {
            queue: String::new(),
            ..Config::default()
        };
        // Only a file that passed the ownership and mode checks (its text is at fault) is
        // asked for its spool; anything else gets the default one.
        if let ConfigError::Invalid {
            path: Some(path), ..
        } = error
        {
            let named = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.parse::<toml::Table>().ok())
                .and_then(|table| match table.get("spool_dir") {
                    Some(toml::Value::String(dir)) => Some(PathBuf::from(dir)),
                    _ => None,
                })
                .filter(|dir| dir.is_absolute());
            if let Some(dir) = named {
                config.spool_dir = dir;
            }
        }
        config
    }

    /// Whether a bridge is configured: not in the [`Config::rescue`] configuration.
    pub fn has_bridge(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The effective settings as TOML, as `smtp_bridge --check-config` prints them.
    pub fn to_toml(&self) -> String {
        let secs = |d: Duration| d.as_secs().to_string();
        let lines = [
            ("queue", toml_string(&self.queue)),
            ("name", toml_string(&self.name)),
            ("hostname", toml_string(&self.hostname)),
            ("banner", toml_string(&self.banner)),
            ("loglevel", toml_string(self.loglevel.as_str())),
            ("listen", toml_list(&self.listen)),
            ("allowed_clients", toml_list(&self.allowed_clients)),
            ("username", toml_string(&self.username)),
            ("group", toml_string(&self.group)),
            ("spool_dir", toml_string(&self.spool_dir.to_string_lossy())),
            ("spool_sync", toml_string(self.spool_sync.as_str())),
            ("max_message_size", self.max_message_size.to_string()),
            ("max_recipients", self.max_recipients.to_string()),
            ("max_connections", self.max_connections.to_string()),
            ("idle_timeout", secs(self.idle_timeout)),
            ("session_timeout", secs(self.session_timeout)),
            ("max_body_chars", self.max_body_chars.to_string()),
            ("queue_lifetime", secs(self.queue_lifetime)),
            ("bridge_timeout", secs(self.bridge_timeout)),
            ("sendmail_timeout", secs(self.sendmail_timeout)),
            ("strict_recipients", self.strict_recipients.to_string()),
        ];
        let mut out = String::new();
        for (key, value) in lines {
            out.push_str(key);
            out.push_str(" = ");
            out.push_str(&value);
            out.push('\n');
        }
        out
    }
}

/// Refuses a file that someone other than root or us could have written: whoever can edit it
/// decides where every message goes and whom the daemon runs as.
fn check_ownership(path: &Path, uid: u32, mode: u32) -> Result<(), ConfigError> {
    let euid = nix::unistd::geteuid().as_raw();
    if uid != 0 && uid != euid {
        return Err(ConfigError::Insecure {
            path: path.to_owned(),
            message: format!(
                "owned by uid {uid}, not by root or the current user (uid {euid}); \
                 chown root {}",
                path.display()
            ),
        });
    }
    if mode & 0o022 != 0 {
        return Err(ConfigError::Insecure {
            path: path.to_owned(),
            message: format!(
                "writable by {} (mode {:04o}); chmod go-w {}",
                if mode & 0o002 != 0 {
                    "everyone"
                } else {
                    "its group"
                },
                mode & 0o7777,
                path.display()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_contains() {
        let table: &[(&str, &str, bool)] = &[
            ("127.0.0.0/8", "127.0.0.1", true),
            ("127.0.0.0/8", "127.255.255.254", true),
            ("127.0.0.0/8", "128.0.0.1", false),
            ("127.0.0.0/8", "::ffff:127.0.0.1", true),
            ("127.0.0.0/8", "::ffff:10.0.0.1", false),
            ("127.0.0.0/8", "::1", false),
            ("::1/128", "::1", true),
            ("::1/128", "::2", false),
            ("::1/128", "127.0.0.1", false),
            ("10.1.2.3", "10.1.2.3", true),
            ("10.1.2.3", "10.1.2.4", false),
            ("10.1.2.3/24", "10.1.2.200", true),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "::ffff:203.0.113.9", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("::/0", "2001:db8::1", true),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("fe80::/10", "febf::1", true),
            ("fe80::/10", "fec0::1", false),
            ("::ffff:192.168.0.0/112", "192.168.7.7", true),
            ("::ffff:192.168.0.0/112", "::ffff:192.169.0.1", false),
            ("192.168.1.1/32", "::ffff:192.168.1.1", true),
        ];
        for (block, addr, want) in table {
            let cidr: Cidr = block.parse().unwrap();
            assert_eq!(cidr.contains(ip(addr)), *want, "{block} contains {addr}");
        }
    }

    #[test]
    fn cidr_parse_errors() {
        for bad in [
            "",
            "127.0.0.0/33",
            "::1/129",
            "10.0.0.0/-1",
            "10.0.0/8",
            "foo",
            "1.2.3.4/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} should not parse");
        }
        assert_eq!(
            "::1".parse::<Cidr>().unwrap(),
            Cidr {
                addr: ip("::1"),
                prefix: 128
            }
        );
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.queue, "http://localhost:8003/replies");
        assert_eq!(c.loglevel, LogLevel::Info);
        assert_eq!(
            c.listen,
            vec![
                "127.0.0.1:25".parse::<SocketAddr>().unwrap(),
                "[::1]:25".parse().unwrap()
            ]
        );
        assert_eq!(
            c.allowed_clients,
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
        );
        assert_eq!(
            (c.username.as_str(), c.group.as_str()),
            ("nobody", "nogroup")
        );
        assert_eq!(c.spool_dir, Path::new("/var/spool/smtp_bridge"));
        assert_eq!(c.spool_sync, SpoolSync::Auto);
        assert_eq!(c.max_message_size, 33_554_432);
        assert_eq!((c.max_recipients, c.max_connections), (1000, 100));
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.session_timeout, Duration::from_secs(3600));
        assert_eq!(c.max_body_chars, 4000);
        assert_eq!(c.queue_lifetime, Duration::from_secs(432_000));
        assert_eq!(c.bridge_timeout, Duration::from_secs(30));
        assert_eq!(c.sendmail_timeout, Duration::from_secs(5));
        assert!(!c.strict_recipients);
        let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
        assert_eq!(c.name, host);
        assert_eq!(c.hostname, host);
        assert_eq!(c.greeting(), format!("{host} ESMTP"));
    }

    #[test]
    fn banner_names_the_host_first() {
        let c = Config::parse(
            "hostname = \"mx.example\"\nbanner = \"$hostname ESMTP Postfix (Debian/GNU)\"\n",
        )
        .unwrap();
        assert_eq!(c.greeting(), "mx.example ESMTP Postfix (Debian/GNU)");
        assert!(c
            .to_toml()
            .contains("banner = \"$hostname ESMTP Postfix (Debian/GNU)\"\n"));
    }

    #[test]
    fn toml_values() {
        let c = Config::parse(
            r#"
# a comment
queue = "https://bridge.example:8443/replies"
name = "web1 via smtp"
hostname = "web1.example.org"
loglevel = "WARN"
listen = ["127.0.0.1:2525", "[::1]:2525", "127.0.0.1:2525"]
allowed_clients = ["10.0.0.0/8", "fd00::/8", "192.0.2.1"]
username = "smtpbridge"
group = "smtpbridge"
spool_dir = "/srv/spool"
spool_sync = "Filesystem"
max_message_size = 1048576
max_recipients = 5
max_connections = 7
idle_timeout = 60
session_timeout = 600
max_body_chars = 100
queue_lifetime = 86400
bridge_timeout = 10
sendmail_timeout = 2
strict_recipients = true
"#,
        )
        .unwrap();
        assert_eq!(c.queue, "https://bridge.example:8443/replies");
        assert_eq!(c.name, "web1 via smtp");
        assert_eq!(c.hostname, "web1.example.org");
        assert_eq!(c.loglevel, LogLevel::Warning);
        assert_eq!(c.listen.len(), 2, "duplicates are dropped");
        assert_eq!(c.allowed_clients[2].prefix, 32);
        assert_eq!(c.spool_dir, Path::new("/srv/spool"));
        assert_eq!(c.spool_sync, SpoolSync::Filesystem);
        assert_eq!(c.max_message_size, 1_048_576);
        assert_eq!(
            (c.max_recipients, c.max_connections, c.max_body_chars),
            (5, 7, 100)
        );
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.session_timeout, Duration::from_secs(600));
        assert_eq!(c.queue_lifetime, Duration::from_secs(86400));
        assert_eq!(c.bridge_timeout, Duration::from_secs(10));
        assert_eq!(c.sendmail_timeout, Duration::from_secs(2));
        assert!(c.strict_recipients);
    }

    #[test]
    fn loglevel_names() {
        let table = [
            ("error", LogLevel::Error),
            ("ERROR", LogLevel::Error),
            ("critical", LogLevel::Error),
            ("warning", LogLevel::Warning),
            ("warn", LogLevel::Warning),
            ("Warning", LogLevel::Warning),
            ("info", LogLevel::Info),
            ("INFO", LogLevel::Info),
            ("debug", LogLevel::Debug),
            ("DEBUG", LogLevel::Debug),
        ];
        for (name, want) in table {
            let c = Config::parse(&format!("loglevel = {name:?}\n")).unwrap();
            assert_eq!(c.loglevel, want, "toml {name}");
            let c = Config::parse(&format!("[DEFAULT]\nloglevel = {name}\n")).unwrap();
            assert_eq!(c.loglevel, want, "ini {name}");
            assert_eq!(name.parse::<LogLevel>().unwrap(), want);
        }
        assert!("verbose".parse::<LogLevel>().is_err());
    }

    /// Every bad input names its key and its line.
    #[test]
    fn errors_name_key_and_line() {
        let table: &[(&str, &str, usize)] = &[
            ("queue = 'x'\nbogus = 1\n", "bogus", 2),
            ("\n\nmax_message_size = 0\n", "max_message_size", 3),
            ("max_message_size = -5\n", "max_message_size", 1),
            ("max_message_size = \"big\"\n", "max_message_size", 1),
            ("max_recipients = 1.5\n", "max_recipients", 1),
            ("max_connections = 0\n", "max_connections", 1),
            ("max_body_chars = 0\n", "max_body_chars", 1),
            ("idle_timeout = 0\n", "idle_timeout", 1),
            ("session_timeout = \"1h\"\n", "session_timeout", 1),
            ("queue_lifetime = 999999999999\n", "queue_lifetime", 1),
            ("bridge_timeout = -1\n", "bridge_timeout", 1),
            ("sendmail_timeout = true\n", "sendmail_timeout", 1),
            ("strict_recipients = \"yes\"\n", "strict_recipients", 1),
            ("# c\nqueue = \"ftp://x/replies\"\n", "queue", 2),
            ("queue = \"localhost:8003/replies\"\n", "queue", 1),
            ("queue = \"http://\"\n", "queue", 1),
            ("queue = \"http://127.0.0.1:99999/replies\"\n", "queue", 1),
            ("queue = \"http://127.0.0.1:0/replies\"\n", "queue", 1),
            ("queue = \"http://[::1:8003/replies\"\n", "queue", 1),
            ("queue = \"http://a:b@127.0.0.1:x/replies\"\n", "queue", 1),
            ("queue = 8003\n", "queue", 1),
            ("loglevel = \"loud\"\n", "loglevel", 1),
            ("\nspool_sync = \"always\"\n", "spool_sync", 2),
            ("spool_sync = true\n", "spool_sync", 1),
            ("listen = [\"127.0.0.1\"]\n", "listen", 1),
            ("listen = []\n", "listen", 1),
            ("listen = [\n  \"127.0.0.1:25\",\n  42,\n]\n", "listen", 1),
            (
                "allowed_clients = [\"10.0.0.0/40\"]\n",
                "allowed_clients",
                1,
            ),
            ("allowed_clients = [\"::1/129\"]\n", "allowed_clients", 1),
            ("allowed_clients = []\n", "allowed_clients", 1),
            ("hostname = \"two words\"\n", "hostname", 1),
            ("banner = \"ESMTP ready\"\n", "banner", 1),
            ("banner = \"$hostname\\r\\n250 forged\"\n", "banner", 1),
            ("banner = 25\n", "banner", 1),
            ("hostname = \"\"\n", "hostname", 1),
            ("name = \"a\\nb\"\n", "name", 1),
            ("username = \"a:b\"\n", "username", 1),
            ("group = \"\"\n", "group", 1),
            ("spool_dir = \"spool\"\n", "spool_dir", 1),
            ("queue = \"http://a\"\nqueue = \"http://b\"\n", "queue", 2),
            ("\nname = \"unterminated\n", "name", 2),
            ("[section]\nname = \"x\"\n", "section", 1),
            // The legacy form.
            ("[DEFAULT]\nqueue = http://x/replies\nfoo = bar\n", "foo", 3),
            ("[DEFAULT]\nsmtpport = 99999\n", "smtpport", 2),
            ("[DEFAULT]\nsmtpport = http\n", "smtpport", 2),
            ("; c\n[DEFAULT]\n\nloglevel = chatty\n", "loglevel", 4),
            ("[DEFAULT]\nqueue = ftp://x\n", "queue", 2),
            (
                "[DEFAULT]\nqueue = http://x/replies\nqueue = http://y/replies\n",
                "queue",
                3,
            ),
            (
                "[DEFAULT]\nmax_message_size = lots\n",
                "max_message_size",
                2,
            ),
            (
                "[DEFAULT]\nstrict_recipients = maybe\n",
                "strict_recipients",
                2,
            ),
            (
                "[DEFAULT]\nlisten = 127.0.0.1:25\nsmtpport = 25\n",
                "listen",
                2,
            ),
        ];
        for (text, key, line) in table {
            match Config::parse(text) {
                Err(ConfigError::Invalid {
                    line: got_line,
                    message,
                    ..
                }) => {
                    assert!(
                        message.contains(key),
                        "{text:?}: message {message:?} does not name {key}"
                    );
                    assert_eq!(got_line, Some(*line), "{text:?}: {message}");
                    let shown = ConfigError::Invalid {
                        path: None,
                        line: got_line,
                        message: message.clone(),
                    }
                    .to_string();
                    assert!(!shown.contains('\n'), "one line: {shown:?}");
                }
                other => panic!("{text:?}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn legacy_ini() {
        let text = "\
# smtp_bridge.conf of the Python original
[DEFAULT]
queue = http://localhost:8003/replies
; the Python level names
loglevel = DEBUG
smtphost = 127.0.0.1
smtpport = 2525
username = nobody
group = nogroup
";
        let c = Config::parse(text).unwrap();
        assert_eq!(c.queue, "http://localhost:8003/replies");
        assert_eq!(c.loglevel, LogLevel::Debug);
        assert_eq!(
            c.listen,
            vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.username, "nobody");
        assert_eq!(c.group, "nogroup");

        // Untouched keys keep their defaults.
        let d = Config::default();
        assert_eq!(c.spool_dir, d.spool_dir);
        assert_eq!(c.allowed_clients, d.allowed_clients);
        // configparser's %% escape.
        let escaped = Config::parse("[DEFAULT]\nqueue = http://h/replies?a=%%41\n").unwrap();
        assert_eq!(escaped.queue, "http://h/replies?a=%41");
        // The keys of the TOML form work in the INI form too.
        let more = Config::parse(
            "[DEFAULT]\nallowed_clients = 10.0.0.0/8, ::1/128\nmax_body_chars = 9\n\
             strict_recipients = yes\nname = box one\n",
        )
        .unwrap();
        assert_eq!(
            more.allowed_clients,
            vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
        );
        assert_eq!(more.max_body_chars, 9);
        assert!(more.strict_recipients);
        assert_eq!(more.name, "box one");
    }

    #[test]
    fn legacy_ini_listen() {
        let table: &[(&str, &[&str])] = &[
            (
                "smtphost = localhost\nsmtpport = 25",
                &["127.0.0.1:25", "[::1]:25"],
            ),
            (
                "smtphost = LOCALHOST\nsmtpport = 2500",
                &["127.0.0.1:2500", "[::1]:2500"],
            ),
            ("smtphost = ::1\nsmtpport = 26", &["[::1]:26"]),
            ("smtphost = [::1]\nsmtpport = 26", &["[::1]:26"]),
            ("smtphost = 10.0.0.1", &["10.0.0.1:25"]),
            ("smtpport = 2526", &["127.0.0.1:2526", "[::1]:2526"]),
            ("smtphost: 127.0.0.2\nsmtpport: 27", &["127.0.0.2:27"]),
            ("SMTPHOST = \"127.0.0.3\"", &["127.0.0.3:25"]),
            ("listen = 127.0.0.1:1, [::1]:2", &["127.0.0.1:1", "[::1]:2"]),
        ];
        for (body, want) in table {
            let c = Config::parse(&format!("[DEFAULT]\n{body}\n")).unwrap();
            let want: Vec<SocketAddr> = want.iter().map(|a| a.parse().unwrap()).collect();
            assert_eq!(c.listen, want, "{body}");
        }
    }

    #[test]
    fn format_detection() {
        assert!(is_legacy_ini("[DEFAULT]\nqueue = x\n"));
        assert!(is_legacy_ini("# c\n; c\n\n  [DEFAULT]  \n"));
        assert!(is_legacy_ini("[default]\n"));
        assert!(!is_legacy_ini("queue = \"x\"\n[DEFAULT]\n"));
        assert!(!is_legacy_ini("# [DEFAULT]\nqueue = \"x\"\n"));
        assert!(!is_legacy_ini(""));
        // A BOM in front of either form is ignored.
        assert!(Config::parse("\u{feff}[DEFAULT]\nloglevel = info\n").is_ok());
        assert!(Config::parse("\u{feff}loglevel = \"info\"\n").is_ok());
    }

    #[test]
    fn to_toml_round_trips() {
        let mut c = Config::parse(
            "name = \"quote \\\" and \\\\ and ünïcödé\"\nlisten = [\"[::]:2525\"]\n\
             allowed_clients = [\"0.0.0.0/0\", \"::/0\"]\nstrict_recipients = true\n",
        )
        .unwrap();
        c.loglevel = LogLevel::Debug;
        let text = c.to_toml();
        for key in KEYS {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "{key} missing from:\n{text}"
            );
        }
        assert_eq!(Config::parse(&text).unwrap(), c);
        let d = Config::default();
        assert_eq!(Config::parse(&d.to_toml()).unwrap(), d);
    }

    #[test]
    fn ownership_rules() {
        let me = nix::unistd::geteuid().as_raw();
        let p = Path::new("/etc/x.conf");
        assert!(check_ownership(p, me, 0o100600).is_ok());
        assert!(check_ownership(p, 0, 0o100644).is_ok());
        let table = [
            (me, 0o100666, "everyone"),
            (me, 0o100664, "group"),
            (me, 0o100602, "everyone"),
        ];
        for (uid, mode, word) in table {
            match check_ownership(p, uid, mode) {
                Err(e @ ConfigError::Insecure { .. }) => {
                    assert!(e.to_string().contains(word), "{e}")
                }
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
        // Someone else's file (uid 12345 is neither root nor us unless we run as it).
        if me != 12345 {
            assert!(matches!(
                check_ownership(p, 12345, 0o100600),
                Err(ConfigError::Insecure { .. })
            ));
        }
    }
}
