//! Logging: the one `log::Log` of both binaries, writing each event as one line to syslog
//! (facility mail, the given ident, our pid) through `/dev/log`, falling back to stderr where
//! there is no syslog, and never blocking or panicking when syslog goes away.
//!
//! Conventions for every module: one line per event; message events carry the queue ID first,
//! Postfix-like: `1A2B3C: from=<root@host>, size=1234, nrcpt=2`,
//! `1A2B3C: to=<a@b>, status=sent (bridge answered 200)`,
//! `1A2B3C: status=deferred (connection refused)`. Never a message body.
//!
//! When a line cannot reach syslog (no `/dev/log`, as in a container), it goes to stderr if
//! it is a warning or an error, or if stderr is a terminal. Lesser lines stay off a stderr
//! that is a pipe, as Postfix's own `sendmail` keeps them: programs that call `sendmail`
//! (PHP, git send-email) show or log whatever it prints, and must not see chatter from us.
//!
//! The daemon hands its lines to a writer thread ([`start_writer`]): the thread that logs
//! (the event loop among them) only appends the line to a bounded queue, and the writer sends
//! what gathered every [`BATCH_WINDOW`] (warnings and errors at once), in order. A datagram to
//! a sleeping syslog daemon costs the sender the wake-up of another process, which on a busy
//! box cost more than the rest of a line; in batches, only the first line of each pays it.
//! The writer may wait for a busy syslog (a batch gets [`SEND_TIMEOUT`] in all), so a burst is
//! not lost to the socket's short queue; lines that still cannot be kept (the queue is full,
//! syslog stays busy) are counted, and a warning says how many before the next line sent.
//! The `sendmail` shim sends each line itself, as it is logged. In both, while syslog cannot
//! be reached and is not due to be tried again, a line that stderr does not want either is
//! dropped before it is even formatted.
//!
//! Warnings and errors get Postfix's `warning: ` and `error: ` prefixes. Carriage returns,
//! line feeds and other control characters in a message are escaped (`\n`, `\x1b`), so a
//! header value from a client can neither split a log line nor forge one.

use std::io::{self, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::config::LogLevel;

/// The longest message sent, in bytes; longer ones are cut (at a character boundary) and
/// marked. Syslog daemons drop or split long datagrams (rsyslog's default limit is 8 KiB).
pub const MAX_LINE: usize = 4000;

/// How often a lost syslog connection is tried again; lines in between go to stderr.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// How long the writer thread lets info and debug lines gather before it sends them.
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// How long the writer thread may spend sending one batch (waiting for a busy syslog, in
/// practice) before the rest of it skips syslog (each line then counts as lost, or goes to
/// stderr by the usual rules); one send may wait that long too. So [`flush`] at exit takes
/// at most about twice this.
pub const SEND_TIMEOUT: Duration = Duration::from_millis(250);

/// The most bytes of lines waiting for the writer thread (their text, their allocation and
/// their place in the queue); lines beyond are counted as lost. While a batch is being sent,
/// as much again may gather.
const MAX_WAITING_BYTES: usize = 1 << 20;

/// What a waiting line costs besides its text: its entry in the queue.
const ENTRY_BYTES: usize = std::mem::size_of::<(log::Level, String)>();

/// What goes to stderr besides syslog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    /// Every line (the daemon in the foreground, tests).
    Always,
    /// Lines that cannot reach syslog: warnings and errors, and every line when stderr is a
    /// terminal (see the module documentation).
    Fallback,
    /// Nothing, ever: for the `sendmail` shim, whose callers treat any text on stderr as a
    /// failure (Symfony) or mail it to root (cron). Lines syslog cannot take are dropped.
    Never,
}

/// Installs the global logger. `ident` is the syslog tag (`smtp_bridge` for the daemon,
/// `sendmail` for the shim). With `stderr_too`, lines also go to stderr (the daemon in the
/// foreground with `--loglevel debug`, tests); without it, stderr is only the fallback
/// ([`Stderr::Fallback`]). Safe to call more than once: later calls only change the level.
pub fn init(ident: &str, level: LogLevel, stderr_too: bool) {
    let stderr = if stderr_too {
        Stderr::Always
    } else {
        Stderr::Fallback
    };
    init_with(ident, level, stderr);
}

/// [`init`] with full control over stderr. Like `init`, later calls only change the level.
pub fn init_with(ident: &str, level: LogLevel, stderr: Stderr) {
    let mut created = false;
    let logger = LOGGER.get_or_init(|| {
        created = true;
        MailLog::new(
            level,
            stderr,
            SyslogSink::new(ident, None, RECONNECT_INTERVAL),
        )
    });
    if created {
        // Fails only when another logger was installed first (a test harness, say); then
        // that one keeps the job and ours stays unused.
        let _ = log::set_logger(logger);
    }
    set_level(level);
}

/// From now on, lines are sent by a writer thread (`log`) in batches (see the module
/// documentation). For the daemon, once it runs as its own user; the lines logged so far were
/// sent as they came. Call [`flush`] before the process exits. Does nothing without an
/// installed logger or when the writer runs already.
pub fn start_writer() -> io::Result<()> {
    match LOGGER.get() {
        Some(logger) => logger.start_writer(),
        None => Ok(()),
    }
}

/// Sends every line still waiting for the writer thread, now, from the calling thread.
pub fn flush() {
    log::logger().flush();
}

/// Lines written to stderr so far (copies, or lines syslog did not take).
static STDERR_LINES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many log lines went to stderr so far, so that a caller printing a message of its own
/// can tell whether the log already showed it there.
pub fn stderr_lines() -> u64 {
    STDERR_LINES.load(Ordering::Relaxed)
}

/// Changes the level of the installed logger (SIGHUP reload).
pub fn set_level(level: LogLevel) {
    if let Some(logger) = LOGGER.get() {
        logger.level.store(encode(level), Ordering::Relaxed);
    }
    log::set_max_level(level.to_level_filter());
}

static LOGGER: OnceLock<MailLog> = OnceLock::new();

fn encode(level: LogLevel) -> u8 {
    match level {
        LogLevel::Error => 0,
        LogLevel::Warning => 1,
        LogLevel::Info => 2,
        LogLevel::Debug => 3,
    }
}

fn decode(n: u8) -> LogLevel {
    match n {
        0 => LogLevel::Error,
        1 => LogLevel::Warning,
        2 => LogLevel::Info,
        _ => LogLevel::Debug,
    }
}

/// The installed logger.
struct MailLog {
    /// The [`LogLevel`], encoded, so a reload needs no lock.
    level: AtomicU8,
    stderr: Stderr,
    stderr_is_terminal: bool,
    /// Taken before `waiting` by whoever sends, so lines leave in the order they came.
    syslog: Mutex<SyslogSink>,
    /// Lines for the writer thread, once it runs.
    waiting: Mutex<Waiting>,
    /// Wakes the writer: the first line of a batch, or a warning that must not wait.
    ready: Condvar,
    /// Whether lines go through the writer thread.
    deferred: AtomicBool,
    /// [`SEND_TIMEOUT`], but for tests.
    send_timeout: Duration,
    /// While there is no syslog and the next attempt to reach it is not due, the time (on
    /// [`clock`]) when it is, so that lines nobody would see are dropped before they are
    /// even formatted; 0 otherwise.
    unreachable_until: AtomicU64,
}

/// Nanoseconds since the first call: a clock an atomic can hold.
fn clock(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX)
}

/// What waits for the writer thread.
#[derive(Debug, Default)]
struct Waiting {
    lines: Vec<(log::Level, String)>,
    bytes: usize,
    /// A warning or an error waits: send without waiting out the window.
    urgent: bool,
    /// Lines refused because the queue was full, since the writer last took it.
    overflowed: u64,
}

/// The warning that `lost` lines went missing, as sent.
fn lost_report(lost: u64) -> String {
    render(
        log::Level::Warn,
        &format!(
            "{lost} log lines lost: syslog did not take them in time, or more than {} KiB waited to be sent",
            MAX_WAITING_BYTES >> 10
        ),
    )
}

/// Locks, even a mutex a panicking thread left poisoned: neither the sink nor the queue holds
/// an invariant a half-finished operation could break.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a record from `target` is one of ours. Libraries we use (ureq, rustls, mio) log
/// their internals at debug level, request headers included; only their warnings and
/// errors are worth a line in the mail log.
fn is_ours(target: &str) -> bool {
    let root = target.split("::").next().unwrap_or(target);
    matches!(root, "smtp_bridge" | "sendmail")
}

impl MailLog {
    fn new(level: LogLevel, stderr: Stderr, syslog: SyslogSink) -> MailLog {
        let logger = MailLog {
            level: AtomicU8::new(encode(level)),
            stderr,
            stderr_is_terminal: io::stderr().is_terminal(),
            syslog: Mutex::new(syslog),
            waiting: Mutex::new(Waiting::default()),
            ready: Condvar::new(),
            deferred: AtomicBool::new(false),
            send_timeout: SEND_TIMEOUT,
            unreachable_until: AtomicU64::new(0),
        };
        logger.note_reachability(&lock(&logger.syslog));
        logger
    }

    /// Records, after a send (under the sink's lock), whether syslog can be reached.
    fn note_reachability(&self, sink: &SyslogSink) {
        let until = match (&sink.conn, sink.failed_at) {
            (None, Some(failed)) => clock(failed + sink.retry_after).max(1),
            _ => 0,
        };
        self.unreachable_until.store(until, Ordering::Relaxed);
    }

    /// Whether a line at `level` would reach no one: syslog is not there (nor due to be tried
    /// again) and stderr does not want it. Such lines are dropped before they are formatted,
    /// as they would be after: on a box without syslog, the info lines cost nothing.
    fn reaches_no_one(&self, level: log::Level) -> bool {
        let until = self.unreachable_until.load(Ordering::Relaxed);
        until != 0
            && clock(Instant::now()) < until
            && !wants_stderr(self.stderr, false, level, self.stderr_is_terminal)
    }

    /// One rendered line: to the writer's queue, or sent now.
    fn write(&self, level: log::Level, line: String) {
        if !self.deferred.load(Ordering::Acquire) {
            let mut sink = lock(&self.syslog);
            // Checked again under the lock [`MailLog::start_writer`] switches under: from
            // then on, the socket may make a sender wait, which only the writer may do.
            if !self.deferred.load(Ordering::Acquire) {
                self.send_line(&mut sink, level, &line, false);
                self.note_reachability(&sink);
                return;
            }
        }
        let cost = line.capacity() + ENTRY_BYTES;
        let mut waiting = lock(&self.waiting);
        if waiting.bytes + cost > MAX_WAITING_BYTES {
            waiting.overflowed += 1;
            return;
        }
        let first = waiting.lines.is_empty();
        let urgent = level <= log::Level::Warn;
        waiting.bytes += cost;
        waiting.lines.push((level, line));
        if first || (urgent && !waiting.urgent) {
            waiting.urgent |= urgent;
            self.ready.notify_one();
        }
    }

    /// Sends one line to syslog (unless `skip_syslog`) and to stderr by the rules; a line
    /// that syslog was too busy for and that went nowhere else counts as lost. Returns what
    /// syslog did with it, and whether stderr got it.
    fn emit(
        &self,
        sink: &mut SyslogSink,
        level: log::Level,
        line: &str,
        skip_syslog: bool,
    ) -> (Sent, bool) {
        let sent = if skip_syslog {
            Sent::Busy
        } else {
            sink.send(level, line)
        };
        let to_stderr = wants_stderr(
            self.stderr,
            sent == Sent::Yes,
            level,
            self.stderr_is_terminal,
        );
        if to_stderr {
            sink.write_stderr(line);
        } else if sent == Sent::Busy {
            sink.lost += 1;
        }
        (sent, to_stderr)
    }

    /// Sends everything waiting, in order, from the calling thread. Once the batch has taken
    /// `send_timeout`, or syslog was busy that long for one line, the rest skips syslog.
    fn drain(&self) {
        let mut sink = lock(&self.syslog);
        let (lines, overflowed) = {
            let mut waiting = lock(&self.waiting);
            waiting.bytes = 0;
            waiting.urgent = false;
            (
                std::mem::take(&mut waiting.lines),
                std::mem::take(&mut waiting.overflowed),
            )
        };
        sink.lost += overflowed;
        let deadline = Instant::now() + self.send_timeout;
        let mut busy = false;
        for (level, line) in lines {
            busy = self.send_line(&mut sink, level, &line, busy) || Instant::now() > deadline;
        }
        self.note_reachability(&sink);
    }

    /// [`MailLog::emit`], after a warning saying how many lines were lost before, if any were
    /// and syslog takes lines again. Returns whether syslog was busy.
    fn send_line(
        &self,
        sink: &mut SyslogSink,
        level: log::Level,
        line: &str,
        skip_syslog: bool,
    ) -> bool {
        if sink.lost > 0 && !skip_syslog {
            let report = lost_report(sink.lost);
            let lost = std::mem::take(&mut sink.lost);
            let (sent, to_stderr) = self.emit(sink, log::Level::Warn, &report, false);
            if sent != Sent::Yes && !to_stderr {
                // A report that went nowhere is not one: the count waits for the next
                // chance, without the report itself.
                sink.lost = lost;
            }
            if sent == Sent::Busy {
                return self.emit(sink, level, line, true).0 == Sent::Busy;
            }
        }
        self.emit(sink, level, line, skip_syslog).0 == Sent::Busy
    }

    /// The writer thread's loop: waits for a first line, lets more gather for
    /// [`BATCH_WINDOW`] unless one is urgent, sends them all.
    fn write_batches(&self) {
        loop {
            {
                let mut waiting = lock(&self.waiting);
                while waiting.lines.is_empty() {
                    waiting = self.ready.wait(waiting).unwrap_or_else(|p| p.into_inner());
                }
                let deadline = Instant::now() + BATCH_WINDOW;
                while !waiting.urgent {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    waiting = self
                        .ready
                        .wait_timeout(waiting, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
            self.drain();
        }
    }

    fn start_writer(&'static self) -> io::Result<()> {
        let mut sink = lock(&self.syslog);
        if self.deferred.load(Ordering::Acquire) {
            return Ok(());
        }
        std::thread::Builder::new()
            .name("log".into())
            .spawn(move || self.write_batches())?;
        // The writer is not the thread that logged: it may wait for a busy syslog.
        sink.set_send_timeout(Some(self.send_timeout));
        self.deferred.store(true, Ordering::Release);
        Ok(())
    }
}

impl log::Log for MailLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let max = decode(self.level.load(Ordering::Relaxed)).to_level_filter();
        metadata.level() <= max
            && (metadata.level() <= log::Level::Warn || is_ours(metadata.target()))
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) || self.reaches_no_one(record.level()) {
            return;
        }
        self.write(
            record.level(),
            render(record.level(), &record.args().to_string()),
        );
    }

    fn flush(&self) {
        if self.deferred.load(Ordering::Acquire) {
            self.drain();
        }
        let _ = io::stderr().flush();
    }
}

/// Whether a line goes to stderr, given the mode, whether syslog took it, its level, and
/// whether stderr is a terminal.
fn wants_stderr(mode: Stderr, sent: bool, level: log::Level, stderr_is_terminal: bool) -> bool {
    match mode {
        Stderr::Always => true,
        Stderr::Fallback => !sent && (level <= log::Level::Warn || stderr_is_terminal),
        Stderr::Never => false,
    }
}

/// The text of one line: the Postfix-style severity prefix, then the message made safe.
fn render(level: log::Level, message: &str) -> String {
    let prefix = match level {
        log::Level::Error => "error: ",
        log::Level::Warn => "warning: ",
        _ => "",
    };
    let mut line = String::with_capacity(prefix.len() + message.len().min(MAX_LINE));
    line.push_str(prefix);
    line.push_str(&sanitize(message, MAX_LINE));
    line
}

/// Escapes what would split or forge a log line and cuts the result at `max` bytes.
fn sanitize(message: &str, max: usize) -> String {
    const CUT: &str = " [truncated]";
    let mut out = String::with_capacity(message.len().min(max));
    for c in message.chars() {
        let mut buf = [0u8; 4];
        let piece: &str = match c {
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\t",
            c if c.is_control() => {
                // Covers C0, DEL and C1; all of them fit in two hex digits but C1 needs
                // the \u form to be unambiguous.
                let escaped = if (c as u32) < 0x80 {
                    format!("\\x{:02x}", c as u32)
                } else {
                    format!("\\u{:04x}", c as u32)
                };
                if out.len() + escaped.len() > max {
                    out.push_str(CUT);
                    return out;
                }
                out.push_str(&escaped);
                continue;
            }
            c => c.encode_utf8(&mut buf),
        };
        if out.len() + piece.len() > max {
            out.push_str(CUT);
            return out;
        }
        out.push_str(piece);
    }
    out
}

type SyslogConn = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

/// What became of a line sent to syslog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// syslog has it.
    Yes,
    /// syslog is there but did not take it in time (its queue is full).
    Busy,
    /// There is no syslog to take it (none listening, or it went away).
    No,
}

/// The connection to the local syslog daemon, made again when it is lost.
struct SyslogSink {
    ident: String,
    /// The socket; `None` means the usual places (`/dev/log`, then `/var/run/syslog`).
    path: Option<PathBuf>,
    conn: Option<SyslogConn>,
    /// When the last connection attempt failed, to space out the next ones.
    failed_at: Option<Instant>,
    retry_after: Duration,
    /// How long a send may wait for a busy syslog: `None` never waits (a thread that logs
    /// for itself, the event loop among them, must not stall).
    send_timeout: Option<Duration>,
    /// Lines lost since the last report: syslog was busy and they did not go to stderr, or
    /// the writer's queue was full.
    lost: u64,
}

impl SyslogSink {
    fn new(ident: &str, path: Option<PathBuf>, retry_after: Duration) -> SyslogSink {
        let mut sink = SyslogSink {
            ident: ident.to_owned(),
            path,
            conn: None,
            failed_at: None,
            retry_after,
            send_timeout: None,
            lost: 0,
        };
        // Connect now: the daemon opens syslog before it drops root and maybe chroots.
        sink.connect();
        sink
    }

    fn connect(&mut self) -> bool {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_MAIL,
            hostname: None,
            process: self.ident.clone(),
            pid: std::process::id(),
        };
        let result = match &self.path {
            Some(p) => syslog::unix_custom(formatter, p),
            None => syslog::unix(formatter),
        };
        match result {
            Ok(conn) => {
                set_timeout(&conn.backend, self.send_timeout);
                self.conn = Some(conn);
                self.failed_at = None;
                true
            }
            Err(_) => {
                self.conn = None;
                self.failed_at = Some(Instant::now());
                false
            }
        }
    }

    fn set_send_timeout(&mut self, timeout: Option<Duration>) {
        self.send_timeout = timeout;
        if let Some(conn) = &self.conn {
            set_timeout(&conn.backend, timeout);
        }
    }

    /// Sends one line. Anything but [`Sent::Yes`] leaves the line to the caller (for stderr,
    /// so it is not lost where stderr is wanted).
    fn send(&mut self, level: log::Level, line: &str) -> Sent {
        if self.conn.is_none() {
            let wait_over = self
                .failed_at
                .is_none_or(|t| t.elapsed() >= self.retry_after);
            if !wait_over || !self.connect() {
                return Sent::No;
            }
        }
        match self.send_once(level, line) {
            Ok(()) => Sent::Yes,
            // syslog is busy: this line goes to stderr, the connection stays.
            Err(e) if is_busy(&e) => Sent::Busy,
            // syslog restarted (ECONNREFUSED on the old socket) or went away: connect again
            // at once, and fall back to stderr if that does not work.
            Err(_) => match self.connect() {
                true => match self.send_once(level, line) {
                    Ok(()) => Sent::Yes,
                    Err(e) if is_busy(&e) => Sent::Busy,
                    Err(_) => Sent::No,
                },
                false => Sent::No,
            },
        }
    }

    fn send_once(&mut self, level: log::Level, line: &str) -> io::Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        };
        // A daemon that forks after opening the log reports its own pid.
        conn.formatter.pid = std::process::id();
        let result = match level {
            log::Level::Error => conn.err(line),
            log::Level::Warn => conn.warning(line),
            log::Level::Info => conn.info(line),
            log::Level::Debug | log::Level::Trace => conn.debug(line),
        };
        result.map_err(|e| match e {
            syslog::Error::Write(io) | syslog::Error::Io(io) => io,
            other => io::Error::other(other.to_string()),
        })
    }

    /// The stderr form of a line: `ident[pid]: line`. Errors writing it are ignored: there is
    /// nowhere left to report them.
    fn write_stderr(&self, line: &str) {
        let mut err = io::stderr().lock();
        let _ = writeln!(err, "{}[{}]: {}", self.ident, std::process::id(), line);
        STDERR_LINES.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether a send failed only because syslog did not take the line in time (a non-blocking
/// send to a full queue, or the timeout of a waiting one).
fn is_busy(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A wedged syslog daemon must not stall whoever logs: without a timeout, datagram sends fail
/// with `WouldBlock` instead of waiting; with one, they wait that long at most. Stream writes
/// (a rare `/dev/log`) cannot be made non-blocking behind the crate's buffer: they give up
/// after the timeout, or after a moment.
fn set_timeout(backend: &syslog::LoggerBackend, timeout: Option<Duration>) {
    match backend {
        syslog::LoggerBackend::Unix(sock) => {
            let _ = sock.set_nonblocking(timeout.is_none());
            let _ = sock.set_write_timeout(timeout);
        }
        syslog::LoggerBackend::UnixStream(writer) => {
            let _ = writer
                .get_ref()
                .set_write_timeout(Some(timeout.unwrap_or(Duration::from_millis(200))));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram as FakeSyslog;

    #[test]
    fn sanitize_table() {
        let table: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("a\nb", "a\\nb"),
            ("a\r\nb", "a\\r\\nb"),
            ("tab\tkept", "tab\tkept"),
            ("esc\u{1b}[31m", "esc\\x1b[31m"),
            ("nul\u{0}", "nul\\x00"),
            ("del\u{7f}", "del\\x7f"),
            ("c1\u{85}", "c1\\u0085"),
            ("Jörg 😀", "Jörg 😀"),
        ];
        for (input, want) in table {
            assert_eq!(&sanitize(input, MAX_LINE), want, "{input:?}");
        }
    }

    #[test]
    fn sanitize_cuts_long_lines_on_char_boundaries() {
        let long = "é".repeat(MAX_LINE);
        let out = sanitize(&long, MAX_LINE);
        assert!(out.len() <= MAX_LINE + " [truncated]".len());
        assert!(out.ends_with(" [truncated]"));
        let short = sanitize("\n\n\n", 5);
        assert_eq!(short, "\\n\\n [truncated]");
    }

    #[test]
    fn render_prefixes() {
        assert_eq!(render(log::Level::Error, "x"), "error: x");
        assert_eq!(render(log::Level::Warn, "x\ny"), "warning: x\\ny");
        assert_eq!(
            render(log::Level::Info, "ABC: status=sent"),
            "ABC: status=sent"
        );
        assert_eq!(render(log::Level::Debug, "d"), "d");
    }

    #[test]
    fn stderr_rules() {
        use log::Level::{Debug, Error, Info, Warn};
        use Stderr::{Always, Fallback, Never};
        // (mode, reached syslog, level, stderr is a terminal, written to stderr)
        let table = [
            (Always, true, Info, false, true),
            (Always, false, Debug, false, true),
            (Fallback, true, Error, true, false),
            (Fallback, false, Error, false, true),
            (Fallback, false, Warn, false, true),
            (Fallback, false, Info, false, false),
            (Fallback, false, Debug, false, false),
            (Fallback, false, Info, true, true),
            (Fallback, false, Debug, true, true),
            (Never, false, Error, true, false),
            (Never, false, Error, false, false),
        ];
        for (mode, sent, level, tty, want) in table {
            assert_eq!(
                wants_stderr(mode, sent, level, tty),
                want,
                "{mode:?} sent={sent} {level} tty={tty}"
            );
        }
    }

    #[test]
    fn only_our_debug_lines() {
        assert!(is_ours("smtp_bridge"));
        assert!(is_ours("smtp_bridge::server"));
        assert!(is_ours("sendmail"));
        assert!(!is_ours("ureq::unversioned::transport"));
        assert!(!is_ours("rustls::client"));
    }

    fn fake_syslog(dir: &std::path::Path) -> (PathBuf, FakeSyslog) {
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let sock = FakeSyslog::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (path, sock)
    }

    fn recv(sock: &FakeSyslog) -> String {
        let mut buf = vec![0u8; 65536];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("smtp_bridge-logging-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Facility mail (2) and the severities map to the priorities syslog expects; the tag is
    /// `ident[pid]`.
    #[test]
    fn syslog_lines_have_mail_facility_ident_and_pid() {
        let dir = temp_dir("facility");
        let (path, server) = fake_syslog(&dir);
        let mut sink = SyslogSink::new("testident", Some(path), Duration::ZERO);
        let pid = std::process::id();
        let table = [
            (log::Level::Error, "<19>"),
            (log::Level::Warn, "<20>"),
            (log::Level::Info, "<22>"),
            (log::Level::Debug, "<23>"),
        ];
        for (level, priority) in table {
            let line = render(level, "Q1: status=sent\r\nforged: line");
            assert_eq!(sink.send(level, &line), Sent::Yes);
            let got = recv(&server);
            assert!(got.starts_with(priority), "{level}: {got:?}");
            assert!(
                got.contains(&format!(" testident[{pid}]: ")),
                "{level}: {got:?}"
            );
            assert!(
                got.ends_with("Q1: status=sent\\r\\nforged: line"),
                "{got:?}"
            );
            assert!(!got.contains('\n'));
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// syslog going away is not fatal (lines are reported as not sent, for stderr), and a
    /// restarted syslog gets the lines again.
    #[test]
    fn syslog_restart_is_survived() {
        let dir = temp_dir("restart");
        let (path, server) = fake_syslog(&dir);
        let mut sink = SyslogSink::new("t", Some(path.clone()), Duration::ZERO);
        assert_eq!(sink.send(log::Level::Info, "one"), Sent::Yes);
        assert!(recv(&server).ends_with("one"));

        drop(server);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            sink.send(log::Level::Info, "two"),
            Sent::No,
            "no syslog: fall back"
        );
        assert_eq!(sink.send(log::Level::Info, "three"), Sent::No, "still none");

        let (_, server) = fake_syslog(&dir);
        assert_eq!(
            sink.send(log::Level::Info, "four"),
            Sent::Yes,
            "reconnected"
        );
        assert!(recv(&server).ends_with("four"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn no_syslog_at_all() {
        let dir = temp_dir("none");
        let mut sink = SyslogSink::new("t", Some(dir.join("absent")), Duration::ZERO);
        assert_eq!(sink.send(log::Level::Error, "nowhere"), Sent::No);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A syslog daemon that stops reading fills its queue; then sends fail at once instead of
    /// blocking the caller.
    #[test]
    fn wedged_syslog_does_not_block() {
        let dir = temp_dir("wedged");
        let (path, _server) = fake_syslog(&dir);
        let mut sink = SyslogSink::new("t", Some(path), Duration::ZERO);
        let line = "x".repeat(1000);
        let mut refused = 0;
        // The queue of an unread datagram socket holds a few hundred kilobytes at most.
        for _ in 0..10_000 {
            match sink.send(log::Level::Info, &line) {
                Sent::Yes => {}
                other => {
                    assert_eq!(other, Sent::Busy);
                    refused += 1;
                    break;
                }
            }
        }
        assert_eq!(refused, 1, "sends never failed: they would have blocked");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A logger of our own on a fake syslog (the global one belongs to the process), lines
    /// going through the writer's queue; the writer thread itself only with `thread`.
    fn deferred_logger(path: PathBuf, thread: bool, send_timeout: Duration) -> &'static MailLog {
        let sink = SyslogSink::new("t", Some(path), Duration::ZERO);
        let mut logger = MailLog::new(LogLevel::Debug, Stderr::Never, sink);
        logger.send_timeout = send_timeout;
        let logger: &'static MailLog = Box::leak(Box::new(logger));
        if thread {
            logger.start_writer().unwrap();
        } else {
            lock(&logger.syslog).set_send_timeout(Some(send_timeout));
            logger.deferred.store(true, Ordering::Release);
        }
        logger
    }

    /// Long enough for a reader thread on a loaded machine: only the wedged test waits it out.
    const PATIENT: Duration = Duration::from_secs(10);

    /// Reads the fake syslog until a line ends with `last`; returns every line's message.
    fn collect_until(sock: &FakeSyslog, last: &str) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let line = recv(sock);
            let message = line.split_once("]: ").map(|(_, m)| m.to_owned()).unwrap();
            let done = message.ends_with(last);
            got.push(message);
            if done {
                return got;
            }
        }
    }

    /// Through the writer thread, lines arrive all and in order, warnings among them.
    #[test]
    fn writer_keeps_every_line_in_order() {
        let dir = temp_dir("writer-order");
        let (path, server) = fake_syslog(&dir);
        let logger = deferred_logger(path, true, PATIENT);
        let mut want = Vec::new();
        for i in 0..300 {
            let level = if i % 50 == 7 {
                log::Level::Warn
            } else {
                log::Level::Info
            };
            let line = render(level, &format!("Q{i}: status=sent"));
            logger.write(level, line.clone());
            want.push(line);
        }
        // More than the socket's queue holds: the writer waited for the reader.
        let got = collect_until(&server, "Q299: status=sent");
        assert_eq!(got, want);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// flush() sends what waits at once, from the caller, without the batch window.
    #[test]
    fn flush_sends_what_waits() {
        let dir = temp_dir("writer-flush");
        let (path, server) = fake_syslog(&dir);
        let logger = deferred_logger(path, false, PATIENT);
        logger.write(log::Level::Info, "Q1: one".into());
        logger.write(log::Level::Info, "Q2: two".into());
        server.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        assert!(
            server.recv(&mut buf).is_err(),
            "nothing sent before the flush"
        );
        log::Log::flush(logger);
        server.set_nonblocking(false).unwrap();
        assert_eq!(collect_until(&server, "Q2: two"), ["Q1: one", "Q2: two"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_lost_lines_warning() {
        assert_eq!(
            lost_report(3),
            "warning: 3 log lines lost: syslog did not take them in time, or more than 1024 KiB waited to be sent"
        );
    }

    /// Lines beyond the queue's bound are not kept, but counted, and the count is the first
    /// thing syslog hears afterwards.
    #[test]
    fn a_full_queue_loses_lines_and_says_how_many() {
        let dir = temp_dir("writer-full");
        let (path, server) = fake_syslog(&dir);
        let logger = deferred_logger(path, false, PATIENT);
        let line = "x".repeat(1000);
        let total = 2 * MAX_WAITING_BYTES / line.len();
        for _ in 0..total {
            logger.write(log::Level::Info, line.clone());
        }
        let kept = lock(&logger.waiting).lines.len();
        assert_eq!(kept, MAX_WAITING_BYTES / (line.len() + ENTRY_BYTES));
        let reader = std::thread::spawn(move || collect_until(&server, "last"));
        logger.drain();
        logger.write(log::Level::Info, "last".into());
        logger.drain();
        let got = reader.join().unwrap();
        assert_eq!(got[0], lost_report((total - kept) as u64));
        assert_eq!(got.len(), 1 + kept + 1);
        assert!(got[1..=kept].iter().all(|l| *l == line));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A syslog that stops reading costs the writer one timeout per batch, not one per line;
    /// what it did not take is counted and reported once it reads again.
    #[test]
    fn a_wedged_syslog_costs_one_timeout_per_batch() {
        let dir = temp_dir("writer-wedged");
        let (path, server) = fake_syslog(&dir);
        let logger = deferred_logger(path, false, SEND_TIMEOUT);
        let lines = 100;
        for i in 0..lines {
            logger.write(log::Level::Info, format!("Q{i}: {}", "y".repeat(2000)));
        }
        let started = Instant::now();
        logger.drain();
        // One wait per line would be 100 × 250 ms.
        assert!(
            started.elapsed() < SEND_TIMEOUT * 20,
            "{:?}",
            started.elapsed()
        );
        let mut taken = 0;
        server.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 65536];
        while server.recv(&mut buf).is_ok() {
            taken += 1;
        }
        assert!(
            taken < lines,
            "the fake syslog took every line: nothing was wedged"
        );
        server.set_nonblocking(false).unwrap();
        logger.write(log::Level::Info, "after".into());
        logger.drain();
        let got = collect_until(&server, "after");
        assert_eq!(got[0], lost_report((lines - taken) as u64));
        assert_eq!(got.len(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A syslog that reads, but slowly (30 ms a line), holds a batch up for about
    /// [`SEND_TIMEOUT`] in all, not for every line's wait: the rest of the batch is counted
    /// as lost, and the count is the first line after.
    #[test]
    fn a_slow_syslog_holds_a_batch_for_one_timeout_in_all() {
        let dir = temp_dir("writer-slow");
        let (path, server) = fake_syslog(&dir);
        let logger = deferred_logger(path, false, SEND_TIMEOUT);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                let line = recv(&server);
                std::thread::sleep(Duration::from_millis(30));
                let done = line.ends_with("after");
                got.push(line.split_once("]: ").unwrap().1.to_owned());
                if done {
                    return got;
                }
            }
        });
        let lines = 100;
        for i in 0..lines {
            logger.write(log::Level::Info, format!("Q{i}"));
        }
        let started = Instant::now();
        logger.drain();
        // Waiting for every line would take 100 × 30 ms; the bound is the budget and one send.
        assert!(
            started.elapsed() < SEND_TIMEOUT * 2 + Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        logger.write(log::Level::Info, "after".into());
        logger.drain();
        let got = reader.join().unwrap();
        let taken = got.iter().filter(|l| l.starts_with('Q')).count();
        assert!(
            taken < lines,
            "every line was sent: the budget did not hold"
        );
        assert_eq!(got[taken], lost_report((lines - taken) as u64));
        assert_eq!(got.len(), taken + 2, "{got:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Without syslog, lines that would go nowhere are not even queued, until it is time to
    /// look for syslog again; warnings still are (stderr takes them).
    #[test]
    fn lines_for_no_one_are_dropped_early() {
        let dir = temp_dir("no-one");
        let path = dir.join("absent");
        let record = |level| {
            log::Record::builder()
                .level(level)
                .target("smtp_bridge::test")
                .args(format_args!("Q1: a line"))
                .build()
        };
        let later = SyslogSink::new("t", Some(path.clone()), Duration::from_secs(3600));
        let logger = MailLog::new(LogLevel::Debug, Stderr::Never, later);
        logger.deferred.store(true, Ordering::Release);
        log::Log::log(&logger, &record(log::Level::Info));
        log::Log::log(&logger, &record(log::Level::Error));
        assert_eq!(lock(&logger.waiting).lines.len(), 0, "stderr: never");
        let fallback = SyslogSink::new("t", Some(path.clone()), Duration::from_secs(3600));
        let mut logger = MailLog::new(LogLevel::Debug, Stderr::Fallback, fallback);
        logger.stderr_is_terminal = false;
        logger.deferred.store(true, Ordering::Release);
        log::Log::log(&logger, &record(log::Level::Info));
        log::Log::log(&logger, &record(log::Level::Warn));
        let levels: Vec<log::Level> = lock(&logger.waiting).lines.iter().map(|l| l.0).collect();
        assert_eq!(levels, [log::Level::Warn], "warnings go to stderr");
        // Due to be looked for again at once: the line goes through, to try.
        let due = SyslogSink::new("t", Some(path), Duration::ZERO);
        let logger = MailLog::new(LogLevel::Debug, Stderr::Never, due);
        logger.deferred.store(true, Ordering::Release);
        log::Log::log(&logger, &record(log::Level::Info));
        assert_eq!(lock(&logger.waiting).lines.len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Once syslog is back (tried again when due), lines reach it again.
    #[test]
    fn syslog_coming_back_is_noticed() {
        let dir = temp_dir("comes-back");
        let path = dir.join("log");
        let sink = SyslogSink::new("t", Some(path.clone()), Duration::from_millis(50));
        let logger: &'static MailLog =
            Box::leak(Box::new(MailLog::new(LogLevel::Debug, Stderr::Never, sink)));
        logger.start_writer().unwrap();
        assert!(logger.reaches_no_one(log::Level::Info));
        let (_, server) = fake_syslog(&dir);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        server.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let got = loop {
            assert!(Instant::now() < deadline, "syslog never found again");
            n += 1;
            let line = format!("Q{n}: hello");
            log::Log::log(
                logger,
                &log::Record::builder()
                    .level(log::Level::Info)
                    .target("smtp_bridge::test")
                    .args(format_args!("{line}"))
                    .build(),
            );
            std::thread::sleep(Duration::from_millis(20));
            if let Ok(len) = server.recv(&mut buf) {
                break String::from_utf8_lossy(&buf[..len]).into_owned();
            }
        };
        assert!(got.contains(": hello"), "{got}");
        assert!(!logger.reaches_no_one(log::Level::Info));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn init_twice_changes_level() {
        init("smtp_bridge-test", LogLevel::Warning, false);
        assert_eq!(log::max_level(), log::LevelFilter::Warn);
        init("ignored", LogLevel::Debug, false);
        assert_eq!(log::max_level(), log::LevelFilter::Debug);
        set_level(LogLevel::Error);
        assert_eq!(log::max_level(), log::LevelFilter::Error);
        log::error!("smtp_bridge logging unit test: one line\nnot two");
        set_level(LogLevel::Info);
        assert_eq!(log::max_level(), log::LevelFilter::Info);
    }
}
