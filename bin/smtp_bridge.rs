//! The smtp_bridge daemon: arguments -> configuration -> logging -> listeners -> spool ->
//! privilege drop -> delivery thread -> event loop -> exit status.
//!
//! Each start-up step is a named function, run in the order DESIGN.md fixes (bind and
//! prepare the spool while root, then drop root before any thread exists or any client is
//! served). Every failure maps to one `sysexits.h` code in [`Failure::exit_code`].

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use smtp_bridge::config::{Config, ConfigError, LogLevel};
use smtp_bridge::deliver::DeliveryThread;
use smtp_bridge::privileges::{self, PrivilegeError, Target};
use smtp_bridge::server::{self, listen, ServerError};
use smtp_bridge::spool::{QueueId, Spool};
use smtp_bridge::{logging, showq, sysexits};

const HELP: &str = "\
smtp_bridge - local SMTP daemon that forwards a digest of every message to the XMPP bridge

Usage: smtp_bridge [OPTIONS]

Options:
  -c, --config PATH     read the configuration from PATH (default /etc/smtp_bridge.conf;
                        without this option a missing default file means built-in defaults)
  -l, --loglevel LEVEL  override the configured log level: error, warning, info or debug;
                        debug also copies every log line to standard error (running by hand)
  -f, --foreground      copy every log line to standard error (running by hand)
  -t, --check-config    validate the configuration, print the effective settings as TOML
                        and exit (0 when valid, 78 when not)
  --requeue ID|all      move a message (or all) kept in failed/ back into the queue, in
                        its place by arrival, and exit (as root or the spool's owner)
  -V, --version         print the version and exit
  -h, --help            print this help and exit

The daemon never forks: run it under systemd or another supervisor.

Signals: SIGTERM/SIGINT stop gracefully, SIGHUP reloads the configuration.
Exit status: 0 ok, 64 usage, 70 internal error, 71 cannot listen or start a thread,
66 no such message in failed/ (--requeue), 73 cannot prepare the spool or requeue,
77 cannot drop privileges (or --requeue of a maildrop file set aside), 78 configuration
error.
";

/// Set once logging copies lines to stderr, so a fatal error is not printed twice.
static LOGS_TO_STDERR: AtomicBool = AtomicBool::new(false);

/// The parsed command line.
#[derive(Debug, Default)]
struct Args {
    config: Option<PathBuf>,
    loglevel: Option<LogLevel>,
    foreground: bool,
    check_config: bool,
    requeue: Option<String>,
    version: bool,
    help: bool,
}

/// Why the daemon stopped with an error.
#[derive(Debug)]
enum Failure {
    /// A bad command line.
    Usage(String),
    /// The configuration could not be used.
    Config(ConfigError),
    /// No listening socket.
    Listen(listen::ListenError),
    /// The spool directories could not be prepared.
    Spool(std::io::Error),
    /// `--requeue`: no such message in failed/, or it could not be moved.
    Requeue(std::io::Error),
    /// Root could not be dropped, or the drop could not be proven.
    Privileges(PrivilegeError),
    /// The delivery thread could not be started.
    Delivery(std::io::Error),
    /// The event loop failed.
    Server(ServerError),
}

impl Failure {
    /// The one place where failures become exit codes.
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => sysexits::EX_USAGE,
            Failure::Config(_) => sysexits::EX_CONFIG,
            Failure::Listen(_) | Failure::Delivery(_) => sysexits::EX_OSERR,
            // The spool directories could not be created or given to the daemon's user.
            Failure::Spool(_) => sysexits::EX_CANTCREAT,
            Failure::Requeue(e) if e.kind() == std::io::ErrorKind::NotFound => sysexits::EX_NOINPUT,
            Failure::Requeue(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                sysexits::EX_NOPERM
            }
            Failure::Requeue(_) => sysexits::EX_CANTCREAT,
            Failure::Privileges(_) => sysexits::EX_NOPERM,
            Failure::Server(_) => sysexits::EX_SOFTWARE,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let err: &dyn std::error::Error = match self {
            Failure::Usage(m) => return write!(f, "{m} (try --help)"),
            Failure::Config(e) => e,
            Failure::Listen(e) => e,
            Failure::Spool(e) => return write!(f, "cannot prepare the spool: {e}"),
            Failure::Requeue(e) => return write!(f, "cannot requeue: {e}"),
            Failure::Privileges(e) => e,
            Failure::Delivery(e) => return write!(f, "cannot start delivery: {e}"),
            Failure::Server(e) => e,
        };
        // The whole chain on one line: "cannot listen on 127.0.0.1:25: bind: Address in use",
        // each cause once (some errors already name their cause in their own text).
        let mut line = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            let cause = s.to_string();
            if !line.ends_with(&cause) {
                line.push_str(": ");
                line.push_str(&cause);
            }
            source = s.source();
        }
        f.write_str(&line)
    }
}

/// SIGHUP's default action ends the process, and the event loop installs its handler only
/// when it starts: a reload asked for during start-up (the configuration was just read) must
/// not kill the daemon. The loop's handler replaces this disposition.
fn ignore_sighup_until_the_loop_handles_it() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN runs no code in signal context; nothing else is installing handlers yet.
    if let Err(e) = unsafe { signal(Signal::SIGHUP, SigHandler::SigIgn) } {
        log::warn!("cannot ignore SIGHUP during start-up: {e}");
    }
}

fn main() -> ExitCode {
    let code = match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let shown = logging::stderr_lines();
            log::error!("fatal: {failure}");
            // The log line first, so that stderr shows them in that order; once only, when
            // the log itself went to stderr (`-f`, or no syslog to take it).
            logging::flush();
            if !LOGS_TO_STDERR.load(Ordering::Relaxed) && logging::stderr_lines() == shown {
                eprintln!("smtp_bridge: {failure}");
            }
            ExitCode::from(failure.exit_code())
        }
    };
    // The last lines may still wait for the writer thread.
    logging::flush();
    code
}

fn run() -> Result<(), Failure> {
    ignore_sighup_until_the_loop_handles_it();
    let args = parse_args(std::env::args_os().skip(1).collect())?;
    if args.help {
        print!("{HELP}");
        return Ok(());
    }
    if args.version {
        println!("smtp_bridge {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let config = load_config(&args)?;
    if args.check_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    if let Some(which) = &args.requeue {
        return requeue(&config, which);
    }
    init_logging(&config, &args);
    let (listeners, inherited) = open_listeners(&config)?;
    let target = resolve_target(&config)?;
    prepare_spool(&config, target.as_ref())?;
    drop_privileges(target.as_ref())?;
    start_log_writer();
    let delivery = start_delivery(&config)?;
    start_showq(&config, &delivery);
    let reload = {
        let path = args.config.clone();
        let level = args.loglevel;
        Box::new(move || {
            let mut c = Config::locate(path.as_deref())?;
            if let Some(l) = level {
                c.loglevel = l;
            }
            Ok(c)
        })
    };
    server::serve(server::Options {
        config,
        listeners,
        delivery,
        reload,
        shutdown_grace: server::DEFAULT_SHUTDOWN_GRACE,
        inherited,
    })
    .map_err(Failure::Server)
}

/// Parses the command line; no I/O.
fn parse_args(raw: Vec<OsString>) -> Result<Args, Failure> {
    let usage = |e: pico_args::Error| Failure::Usage(e.to_string());
    let mut p = pico_args::Arguments::from_vec(raw);
    let args = Args {
        help: p.contains(["-h", "--help"]),
        version: p.contains(["-V", "--version"]),
        check_config: p.contains(["-t", "--check-config"]),
        requeue: p
            .opt_value_from_str::<_, String>("--requeue")
            .map_err(usage)?,
        foreground: p.contains(["-f", "--foreground"]),
        // As a string (PathBuf: FromStr), because only string values honour `--config=PATH`.
        config: p
            .opt_value_from_str::<_, PathBuf>(["-c", "--config"])
            .map_err(usage)?,
        loglevel: p
            .opt_value_from_fn(["-l", "--loglevel"], parse_level)
            .map_err(usage)?,
    };
    let rest = p.finish();
    if let Some(first) = rest.first() {
        return Err(Failure::Usage(format!(
            "unexpected argument {:?}",
            first.to_string_lossy()
        )));
    }
    Ok(args)
}

/// Log level names as the configuration file and the Python original spell them.
fn parse_level(s: &str) -> Result<LogLevel, String> {
    match s.to_ascii_lowercase().as_str() {
        "error" | "err" | "critical" => Ok(LogLevel::Error),
        "warning" | "warn" => Ok(LogLevel::Warning),
        "info" => Ok(LogLevel::Info),
        "debug" => Ok(LogLevel::Debug),
        _ => Err(format!(
            "unknown log level {s:?} (error, warning, info, debug)"
        )),
    }
}

/// Step 1: the configuration, with the command line's log level on top.
fn load_config(args: &Args) -> Result<Config, Failure> {
    let mut config = Config::locate(args.config.as_deref()).map_err(Failure::Config)?;
    if let Some(level) = args.loglevel {
        config.loglevel = level;
    }
    Ok(config)
}

/// Step 2: syslog (facility mail), opened while still root. `--foreground`, or
/// `--loglevel debug` on the command line, is someone running the daemon by hand: every line
/// goes to stderr too.
fn init_logging(config: &Config, args: &Args) {
    let stderr_too = args.foreground || args.loglevel == Some(LogLevel::Debug);
    logging::init("smtp_bridge", config.loglevel, stderr_too);
    LOGS_TO_STDERR.store(stderr_too, Ordering::Relaxed);
}

/// Step 3: the sockets systemd passed us (and `true`: they outlive us), or bind every
/// `listen` address (as root for port 25).
fn open_listeners(config: &Config) -> Result<(Vec<TcpListener>, bool), Failure> {
    if let Some(listeners) = listen::from_systemd().map_err(Failure::Listen)? {
        log::info!(
            "using {} listening sockets from systemd; listen setting ignored",
            listeners.len()
        );
        return Ok((listeners, true));
    }
    let listeners = listen::bind_all(&config.listen).map_err(Failure::Listen)?;
    Ok((listeners, false))
}

/// `--requeue ID|all`: failed/ back into the queue, one line per message on stdout. Run as
/// root, the files keep their owner (the daemon's user); the running daemon takes them up
/// within a second.
fn requeue(config: &Config, which: &str) -> Result<(), Failure> {
    let spool = Spool::new(config.spool_dir.clone());
    let named = (which != "all").then_some(which);
    let report = spool.requeue_failed(named).map_err(Failure::Requeue)?;
    if report.requeued.is_empty() && report.skipped.is_empty() {
        println!("nothing in {}/failed", config.spool_dir.display());
    }
    for id in &report.requeued {
        println!("{id}: requeued");
    }
    for (name, why) in &report.skipped {
        eprintln!("smtp_bridge: failed/{name}: not requeued: {why}");
    }
    match (named, report.skipped.is_empty()) {
        // The one message asked for was not requeued: say so by the exit status too.
        (Some(_), false) => Err(Failure::Requeue(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "it is not a queue file of the spool's owner",
        ))),
        _ => Ok(()),
    }
}

/// Whom to become: `None` when not started as root (nothing to drop).
fn resolve_target(config: &Config) -> Result<Option<Target>, Failure> {
    if !privileges::is_root() {
        return Ok(None);
    }
    Target::lookup(&config.username, &config.group)
        .map(Some)
        .map_err(Failure::Privileges)
}

/// Step 4: the spool directories, given to the daemon's user when we are root.
fn prepare_spool(config: &Config, target: Option<&Target>) -> Result<(), Failure> {
    let spool = Spool::new(config.spool_dir.clone());
    spool
        .prepare(target.map(|t| (t.uid, t.gid)))
        .map_err(Failure::Spool)?;
    if let Some(warning) = spool.journal_warning() {
        log::warn!("{warning}");
    }
    // New mail sorts after what waits, even if the clock went back since it was queued.
    if let Some(newest) = spool.ids().map_err(Failure::Spool)?.last() {
        QueueId::continue_after(newest);
    }
    Ok(())
}

/// Step 5: drop root for good and prove it, before any thread or client exists.
fn drop_privileges(target: Option<&Target>) -> Result<(), Failure> {
    match target {
        Some(t) => {
            privileges::drop_to(t).map_err(Failure::Privileges)?;
            log::info!(
                "dropped privileges to user={} uid={} group={} gid={}",
                t.user,
                t.uid,
                t.group,
                t.gid
            );
        }
        None => log::info!(
            "not started as root (uid={}): no privileges to drop",
            nix::unistd::getuid()
        ),
    }
    Ok(())
}

/// Step 6: from here on, log lines leave in batches from a writer thread, so that no thread
/// that logs (the event loop among them) pays for syslog.
fn start_log_writer() {
    if let Err(e) = logging::start_writer() {
        log::warn!("cannot start the log writer thread: {e}; lines are sent as they come");
    }
}

/// Step 7: the background delivery thread.
fn start_delivery(config: &Config) -> Result<DeliveryThread, Failure> {
    DeliveryThread::spawn(config.clone()).map_err(Failure::Delivery)
}

/// Step 8: the socket through which every user's `mailq` and `sendmail -q` reach the
/// queue. Without it only root and the spool's owner can; the daemon serves on.
fn start_showq(config: &Config, delivery: &DeliveryThread) {
    if let Err(e) = showq::start(config, delivery.handle()) {
        log::warn!(
            "cannot serve mailq for every user at {}: {e}; only root and the spool's owner can list the queue",
            showq::socket_path(&config.spool_dir).display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, Failure> {
        parse_args(list.iter().map(OsString::from).collect())
    }

    #[test]
    fn options_parse() {
        let a = args(&[
            "--config",
            "/x.conf",
            "--loglevel",
            "DEBUG",
            "--check-config",
        ])
        .unwrap();
        assert_eq!(a.config, Some(PathBuf::from("/x.conf")));
        assert_eq!(a.loglevel, Some(LogLevel::Debug));
        assert!(a.check_config && !a.help && !a.version);
        let a = args(&["--config=/y.conf", "--loglevel", "warning"]).unwrap();
        assert_eq!(a.config, Some(PathBuf::from("/y.conf")));
        assert_eq!(a.loglevel, Some(LogLevel::Warning));
        assert!(!a.foreground);
        // The short forms smtp_bridge(8) gives.
        let a = args(&["-f", "-c", "/z.conf", "-l", "info", "-t"]).unwrap();
        assert_eq!(a.config, Some(PathBuf::from("/z.conf")));
        assert_eq!(a.loglevel, Some(LogLevel::Info));
        assert!(a.foreground && a.check_config);
        assert!(args(&["-V"]).unwrap().version);
        assert!(args(&["-h"]).unwrap().help);
        assert!(args(&["--foreground"]).unwrap().foreground);
    }

    #[test]
    fn a_failure_names_each_cause_once() {
        let e = Failure::Config(ConfigError::Io {
            path: PathBuf::from("/nonexistent.conf"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(
            e.to_string(),
            "cannot read /nonexistent.conf: entity not found"
        );
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for bad in [
            &["--bogus"][..],
            &["--loglevel", "loud"],
            &["--config"],
            &["extra"],
            &["-c"],
            &["-x"],
            &["-l", "loud"],
        ] {
            let e = args(bad).unwrap_err();
            assert_eq!(e.exit_code(), sysexits::EX_USAGE, "{bad:?}");
        }
    }

    #[test]
    fn help_lists_every_option() {
        for opt in [
            "-c, --config",
            "-l, --loglevel",
            "-f, --foreground",
            "-t, --check-config",
            "-V, --version",
            "-h, --help",
        ] {
            assert!(HELP.contains(opt), "{opt}");
        }
    }
}
