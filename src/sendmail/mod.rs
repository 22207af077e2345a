//! The `sendmail` shim: its command line, its stdin rules, and what each mode does, so that
//! every program written for Postfix's `sendmail` (also run as `mailq` and `newaliases`)
//! works unchanged. `bin/sendmail.rs` only calls [`run`] and maps the error to its exit
//! code with [`SendmailError::exit_code`].
//!
//! - [`args`]: the command line (`../shared/sendmail-compat.md` §1).
//! - [`intake`]: the stdin rules and `-t` (§2).
//! - [`mod@submit`]: bridge first, else the spool; never lose an acknowledged message (§3).
//! - `mailq`, `sendmail -q`, `newaliases`, `-bv` and `-bs` are here (§5).
//!
//! Started by root (cron, atd, sudo), the shim does its spool work as the spool directory's
//! owner, so root never leaves files there that the unprivileged daemon cannot read.

mod address;
pub mod args;
pub mod intake;
pub mod submit;

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::{Config, ConfigError, LogLevel};
use crate::digest::MAX_PARSE_BYTES;
use crate::envelope::{cap_full_name, Envelope, Origin};
use crate::showq;
use crate::spool::Spool;
use crate::sysexits;

pub use args::{Args, ArgsError, Mode, HONOURED_OPTIONS, IGNORED_OPTIONS, REJECTED_OPTIONS};
pub use submit::{submit, SubmitError, SubmitOutcome};

/// Where syslog listens; without it the shim does not log (see [`run`]).
const SYSLOG_SOCKET: &str = "/dev/log";

/// Longest SMTP command line accepted by `sendmail -bs` (Postfix's `line_length_limit`).
pub const SMTP_MAX_LINE: usize = 2048;

/// Why the shim failed. Each variant has one exit code ([`SendmailError::exit_code`]) and
/// one line on stderr (its Display, after `sendmail: `).
#[derive(Debug)]
#[non_exhaustive]
pub enum SendmailError {
    /// Occurs when the command line cannot be used (exit 64).
    Usage(ArgsError),
    /// Occurs when `-bv` names no recipient (exit 64).
    NoRecipientsGiven,
    /// Occurs when a message has no recipients and `strict_recipients` is set (exit 64).
    NoRecipients,
    /// Occurs when a message has more recipients than `max_recipients` (exit 64).
    TooManyRecipients {
        /// The configured limit.
        limit: usize,
    },
    /// Occurs when the configuration cannot be used (exit 78).
    Config(ConfigError),
    /// Occurs when stdin cannot be read (exit 65).
    Input(io::Error),
    /// Occurs when the message is larger than `max_message_size` (exit 65).
    TooLarge {
        /// The configured limit in bytes.
        limit: u64,
    },
    /// Occurs when the message could be neither delivered nor spooled (exit 75).
    Submit(SubmitError),
    /// Occurs when the queue cannot be read or run with this user's rights (exit 77).
    QueuePermission(io::Error),
    /// Occurs when listing or running the queue fails otherwise (exit 75).
    Queue(io::Error),
    /// Occurs when a user who may not read the spool asks for the queue and no daemon
    /// answers for it (exit 69, as Postfix's "mail system is down").
    MailSystemDown,
    /// Occurs when `-bs` cannot read its input or write its replies (exit 74).
    Session(io::Error),
    /// Occurs when writing to stdout fails other than by a closed pipe (exit 74).
    Output(io::Error),
    /// Occurs when root cannot become the spool owner (exit 71).
    Privileges {
        /// What was being done.
        step: &'static str,
        /// The cause.
        source: nix::Error,
    },
}

impl SendmailError {
    /// The `sysexits.h` code for this error: the one place the shim's exit codes are chosen.
    pub fn exit_code(&self) -> u8 {
        match self {
            SendmailError::Usage(_)
            | SendmailError::NoRecipientsGiven
            | SendmailError::NoRecipients
            | SendmailError::TooManyRecipients { .. } => sysexits::EX_USAGE,
            SendmailError::Config(_) => sysexits::EX_CONFIG,
            SendmailError::Input(_) | SendmailError::TooLarge { .. } => sysexits::EX_DATAERR,
            SendmailError::Submit(_) | SendmailError::Queue(_) => sysexits::EX_TEMPFAIL,
            SendmailError::QueuePermission(_) => sysexits::EX_NOPERM,
            SendmailError::MailSystemDown => sysexits::EX_UNAVAILABLE,
            SendmailError::Session(_) | SendmailError::Output(_) => sysexits::EX_IOERR,
            SendmailError::Privileges { .. } => sysexits::EX_OSERR,
        }
    }
}

impl fmt::Display for SendmailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendmailError::Usage(e) => write!(f, "{e}"),
            SendmailError::NoRecipientsGiven => {
                f.write_str("recipient addresses must be specified on the command line")
            }
            SendmailError::NoRecipients => f.write_str(
                "no recipient addresses found (strict_recipients is set in the configuration)",
            ),
            SendmailError::TooManyRecipients { limit } => {
                write!(f, "too many recipients (max_recipients is {limit})")
            }
            SendmailError::Config(e) => write!(f, "{e}"),
            SendmailError::Input(e) => write!(f, "cannot read the message from stdin: {e}"),
            SendmailError::TooLarge { limit } => write!(
                f,
                "message too large: more than {limit} bytes (max_message_size); nothing was queued"
            ),
            SendmailError::Submit(e) => write!(f, "cannot queue message: {e}"),
            SendmailError::QueuePermission(e) => write!(
                f,
                "cannot access the mail queue: {e} (only root and the spool owner may while the smtp_bridge daemon is not running)"
            ),
            SendmailError::Queue(e) => write!(f, "mail queue: {e}"),
            SendmailError::MailSystemDown => write!(
                f,
                "mail queue unavailable - mail system is down: the smtp_bridge daemon does not answer, and only root and the spool owner may read the queue without it"
            ),
            SendmailError::Session(e) => write!(f, "smtp session on stdin/stdout: {e}"),
            SendmailError::Output(e) => write!(f, "cannot write to stdout: {e}"),
            SendmailError::Privileges { step, source } => write!(f, "{step}: {source}"),
        }
    }
}

impl std::error::Error for SendmailError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendmailError::Usage(e) => Some(e),
            SendmailError::Config(e) => Some(e),
            SendmailError::Submit(e) => Some(e),
            SendmailError::Input(e)
            | SendmailError::QueuePermission(e)
            | SendmailError::Queue(e)
            | SendmailError::Session(e)
            | SendmailError::Output(e) => Some(e),
            SendmailError::Privileges { source, .. } => Some(source),
            SendmailError::NoRecipientsGiven
            | SendmailError::NoRecipients
            | SendmailError::TooManyRecipients { .. }
            | SendmailError::TooLarge { .. }
            | SendmailError::MailSystemDown => None,
        }
    }
}

/// Runs the shim: `argv` with `argv[0]`, the message or SMTP session on `input`, listings
/// on `output`. Nothing is written anywhere on success outside `-bp`, `-bv` and `-bs`.
pub fn run(
    argv: &[String],
    input: &mut dyn Read,
    output: &mut dyn Write,
) -> Result<(), SendmailError> {
    let args = args::parse(argv).map_err(SendmailError::Usage)?;
    let explicit = args.config.clone().or_else(|| {
        std::env::var_os(crate::config::ENV_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let needs_config = matches!(
        args.mode,
        Mode::Deliver | Mode::Smtp | Mode::ListQueue | Mode::RunQueue
    );
    let mut rescued = None;
    let config = match Config::locate(explicit.as_deref()) {
        Ok(config) => Some(config),
        // A message is never refused over the configuration (cron's output would be lost
        // with it): it waits in the spool, where the daemon, which keeps its last good
        // configuration, takes it; the error goes to the log. Refused only when that spool
        // cannot take it either.
        // (Not a file others may write: that one is refused, loudly, as the daemon refuses
        // it, since nothing it says can be trusted and the admin must fix it.)
        Err(e) if args.mode == Mode::Deliver && !matches!(e, ConfigError::Insecure { .. }) => {
            let config = Config::rescue(&e);
            rescued = Some(e);
            Some(config)
        }
        Err(e) if needs_config => return Err(SendmailError::Config(e)),
        // newaliases in a package's postinst must not fail over our configuration.
        Err(_) => None,
    };
    let level = config.as_ref().map_or(LogLevel::Info, |c| c.loglevel);
    // The shim must never write log lines to stderr: Symfony's ProcessStream treats any
    // stderr text as a failed start, and cron mails whatever appears there. The logger
    // falls back to stderr where there is no syslog socket, so there the shim does not log
    // (Postfix's sendmail, too, logs nowhere without a syslog daemon).
    if Path::new(SYSLOG_SOCKET).exists() {
        crate::logging::init("sendmail", level, false);
    }
    for option in &args.ignored {
        log::debug!("ignored option {option}");
    }
    for option in &args.unknown {
        log::debug!("unknown option {option} accepted and ignored");
    }

    let Some(config) = config else {
        return run_without_config(&args, output);
    };
    if let Some(error) = rescued {
        log::error!(
            "{error}; the message goes to the spool {} without trying the bridge",
            config.spool_dir.display()
        );
        let origin = local_origin(args.full_name.as_deref());
        return become_spool_owner(&config, false)
            .and_then(|()| deliver(&config, &args, origin, input))
            .map_err(|spooling| {
                log::error!("and the spool could not take it: {spooling}");
                SendmailError::Config(error)
            });
    }
    match &args.mode {
        Mode::Deliver => {
            let origin = local_origin(args.full_name.as_deref());
            become_spool_owner(&config, true)?;
            deliver(&config, &args, origin, input)
        }
        Mode::Smtp => {
            // Postfix's `-bs` session takes its senders from MAIL FROM alone.
            let origin = local_origin(None);
            become_spool_owner(&config, true)?;
            smtp_session(&config, origin, input, output)
        }
        Mode::ListQueue => {
            become_spool_owner(&config, false)?;
            list_queue(&config, output)
        }
        Mode::RunQueue => {
            become_spool_owner(&config, false)?;
            // The summary is for a person at a terminal (or `-v`), never for cron, which
            // would mail it back through us on every run.
            let summary = args.verbose > 0 || io::IsTerminal::is_terminal(&io::stdout());
            run_queue(&config, summary, output)
        }
        Mode::Verify | Mode::NewAliases | Mode::Noop(_) | Mode::Help | Mode::Version => {
            run_without_config(&args, output)
        }
    }
}

/// What `sendmail --help` prints.
const USAGE: &str = "\
usage: sendmail [-t] [-i] [-f sender] [-F name] [--config path] [recipient ...] < message
       sendmail -bs | -bp | -q | -bi | -bv recipient ...
       mailq | newaliases
Other options of sendmail, Postfix and Exim are accepted and ignored; see sendmail(8).
";

/// The modes that need no configuration: `-bv`, `newaliases` and the no-op modes.
fn run_without_config(args: &Args, output: &mut dyn Write) -> Result<(), SendmailError> {
    match &args.mode {
        Mode::Verify => {
            if args.recipients.is_empty() {
                return Err(SendmailError::NoRecipientsGiven);
            }
            let mut text = String::new();
            for rcpt in &args.recipients {
                text.push_str(&format!("{rcpt}... deliverable\n"));
            }
            write_output(output, text.as_bytes())
        }
        Mode::NewAliases => Ok(()),
        Mode::Help => write_output(output, USAGE.as_bytes()),
        Mode::Version => write_output(
            output,
            format!("sendmail (smtp_bridge) {}\n", env!("CARGO_PKG_VERSION")).as_bytes(),
        ),
        Mode::Noop(option) => {
            log::info!("{option}: nothing to do (the daemon is smtp_bridge), exit 0");
            Ok(())
        }
        // The other modes need the configuration, which `run` loaded or refused.
        Mode::Deliver | Mode::Smtp | Mode::ListQueue | Mode::RunQueue => Ok(()),
    }
}

/// Writes to stdout; a reader that went away (`mailq | head -1`) is not an error.
fn write_output(output: &mut dyn Write, bytes: &[u8]) -> Result<(), SendmailError> {
    match output.write_all(bytes).and_then(|()| output.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(SendmailError::Output(e)),
        _ => Ok(()),
    }
}

/// Who is submitting: the real uid, its login name (`uid<N>` without a passwd entry) and
/// the full name given with `-F`, cut to [`MAX_FULL_NAME`](crate::envelope::MAX_FULL_NAME)
/// bytes so that it always fits in a spool header (whatever could be sent can be spooled).
pub fn local_origin(full_name: Option<&str>) -> Origin {
    let uid = Uid::current();
    let user = match User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => format!("uid{uid}"),
    };
    Origin::Local {
        uid: uid.as_raw(),
        user,
        full_name: full_name.map(cap_full_name),
    }
}

/// As root, become the owner of the spool directory for good (groups, gid, then uid), so
/// that every file this process leaves there is readable by the daemon. When the directory
/// does not exist yet and `prepare` is set, it is first created for the configured daemon
/// user. Not root: nothing to do.
fn become_spool_owner(config: &Config, prepare: bool) -> Result<(), SendmailError> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let spool = Spool::new(&config.spool_dir);
    let meta = match std::fs::metadata(spool.root()) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound && prepare => {
            let owner = daemon_owner(config);
            if let Err(e) = spool.prepare(owner) {
                log::warn!("cannot prepare the spool {}: {e}", spool.root().display());
            }
            match std::fs::metadata(spool.root()) {
                Ok(meta) => meta,
                // The submission will report the spool error (exit 75) if the bridge fails.
                Err(_) => return Ok(()),
            }
        }
        Err(_) => return Ok(()),
    };
    if meta.uid() == 0 {
        return Ok(());
    }
    let (uid, gid) = (Uid::from_raw(meta.uid()), Gid::from_raw(meta.gid()));
    let step = |step: &'static str| move |source| SendmailError::Privileges { step, source };
    nix::unistd::setgroups(&[gid]).map_err(step("setgroups to the spool group"))?;
    nix::unistd::setgid(gid).map_err(step("setgid to the spool group"))?;
    nix::unistd::setuid(uid).map_err(step("setuid to the spool owner"))?;
    Ok(())
}

/// The configured daemon user and group as (uid, gid), when they exist.
fn daemon_owner(config: &Config) -> Option<(u32, u32)> {
    let user = User::from_name(&config.username).ok().flatten()?;
    let gid = match Group::from_name(&config.group) {
        Ok(Some(group)) => group.gid,
        _ => user.gid,
    };
    Some((user.uid.as_raw(), gid.as_raw()))
}

/// Reads one message from stdin and submits it.
fn deliver(
    config: &Config,
    args: &Args,
    origin: Origin,
    input: &mut dyn Read,
) -> Result<(), SendmailError> {
    let spool = Spool::new(&config.spool_dir);
    let arrival = SystemTime::now();
    let mut intake = intake::Intake::new(args.ignore_dots);
    // The start of the message stays in memory (the digest reads no more than this); the
    // rest of a larger message streams into a maildrop file, so memory stays bounded.
    let mut start: Vec<u8> = Vec::new();
    let mut envelope: Option<Envelope> = None;
    let mut tail: Option<submit::Tail> = None;
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let mut out: Vec<u8> = Vec::with_capacity(buf.len() + 8);
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SendmailError::Input(e)),
        };
        out.clear();
        if n == 0 {
            intake.finish(&mut out);
        } else {
            intake.feed(&buf[..n], &mut out);
        }
        total += out.len() as u64;
        if total > config.max_message_size {
            // Dropping the tail removes its uncommitted file: nothing is spooled.
            return Err(SendmailError::TooLarge {
                limit: config.max_message_size,
            });
        }
        let room = MAX_PARSE_BYTES - start.len();
        let (head, rest) = out.split_at(room.min(out.len()));
        start.extend_from_slice(head);
        if !rest.is_empty() {
            match &mut tail {
                Some(tail) => tail.write(rest),
                None => {
                    let env = build_envelope(config, args, &origin, &intake, &start, arrival);
                    let mut opened = submit::Tail::open(&spool, &env, &start);
                    opened.write(rest);
                    tail = Some(opened);
                    envelope = Some(env);
                }
            }
        }
        if n == 0 || intake.ended() {
            break;
        }
    }
    let envelope =
        envelope.unwrap_or_else(|| build_envelope(config, args, &origin, &intake, &start, arrival));
    // `-f` and the argv recipients were checked when parsed; a `From ` line and `-t` headers
    // come from the message.
    if address::has_control(&envelope.sender) {
        return Err(SendmailError::Usage(ArgsError::ControlCharacter("sender")));
    }
    if envelope.recipients.iter().any(|r| address::has_control(r)) {
        return Err(SendmailError::Usage(ArgsError::ControlCharacter(
            "recipient",
        )));
    }
    if envelope.recipients.is_empty() && config.strict_recipients {
        return Err(SendmailError::NoRecipients);
    }
    if envelope.recipients.len() > config.max_recipients {
        return Err(SendmailError::TooManyRecipients {
            limit: config.max_recipients,
        });
    }
    let result = match tail {
        None => submit::submit(config, &envelope, &start),
        Some(tail) => submit::submit_streamed(config, &envelope, &start, total, tail),
    };
    result.map(drop).map_err(SendmailError::Submit)
}

/// The envelope of a stdin submission: the sender from `-f`/`-r`, else a leading `From `
/// line, else `login@hostname`; the argv recipients, plus the header ones under `-t`,
/// without duplicates.
fn build_envelope(
    config: &Config,
    args: &Args,
    origin: &Origin,
    intake: &intake::Intake,
    start: &[u8],
    arrival: SystemTime,
) -> Envelope {
    let sender = match (&args.sender, intake.from_line_sender()) {
        (Some(sender), _) => sender.clone(),
        (None, Some(sender)) => sender.to_owned(),
        (None, None) => default_sender(config, origin),
    };
    let mut recipients: Vec<String> = Vec::new();
    let header = if args.extract_recipients {
        intake::header_recipients(start)
    } else {
        Vec::new()
    };
    // First occurrence kept, in order; a set keeps a header of 100,000 addresses linear.
    let mut seen = std::collections::HashSet::new();
    for rcpt in args.recipients.iter().chain(&header) {
        if seen.insert(rcpt.as_str()) {
            recipients.push(rcpt.clone());
        }
    }
    Envelope {
        sender,
        recipients,
        origin: origin.clone(),
        arrival,
    }
}

/// `login@hostname`: the sender of a submission that named none (Postfix qualifies with
/// `myorigin`; ours is the configured host name).
fn default_sender(config: &Config, origin: &Origin) -> String {
    let user = match origin {
        Origin::Local { user, .. } => user.as_str(),
        Origin::Smtp { .. } => "MAILER-DAEMON",
    };
    format!("{user}@{}", config.hostname)
}

/// `sendmail -bs`: one SMTP session on stdin/stdout; each message is one submission.
fn smtp_session(
    config: &Config,
    origin: Origin,
    input: &mut dyn Read,
    output: &mut dyn Write,
) -> Result<(), SendmailError> {
    let session = crate::smtp::SessionConfig {
        hostname: config.hostname.clone(),
        banner: config.greeting(),
        max_message_size: config.max_message_size,
        max_recipients: config.max_recipients,
        max_line_length: SMTP_MAX_LINE,
    };
    let accepted = crate::smtp::stdio::serve(session, input, output, |tx, raw| {
        let envelope = Envelope {
            sender: tx.sender,
            recipients: tx.recipients,
            origin: origin.clone(),
            arrival: SystemTime::now(),
        };
        submit::submit(config, &envelope, &raw)
            .map(|outcome| outcome.id().to_string())
            .map_err(|e| format!("cannot queue message: {e}"))
    });
    match accepted {
        Ok(n) => {
            log::debug!("smtp session on stdin ended, messages={n}");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(SendmailError::Session(e)),
    }
}

/// Sorts a spool error: lack of rights gets its own exit code (77).
fn queue_error(e: io::Error) -> SendmailError {
    if e.kind() == io::ErrorKind::PermissionDenied {
        SendmailError::QueuePermission(e)
    } else {
        SendmailError::Queue(e)
    }
}

/// `mailq`, `sendmail -bp`: `Mail queue is empty`, or one line per waiting message
/// ([`showq::queue_listing`]). Root and the spool's owner read the spool; anyone else asks
/// the running daemon, which answers for it (and without one gets exit 69).
fn list_queue(config: &Config, output: &mut dyn Write) -> Result<(), SendmailError> {
    if !may_run_queue(config) {
        return match ask_daemon(config, "list")? {
            Some(listing) => write_output(output, listing.as_bytes()),
            None => Err(SendmailError::MailSystemDown),
        };
    }
    let spool = Spool::new(&config.spool_dir);
    let (listing, _) =
        showq::queue_listing(&spool, config.max_message_size).map_err(queue_error)?;
    write_output(output, listing.as_bytes())
}

/// Whether this process may read and run the queue itself: root, or the spool's owner (or
/// there is no spool yet).
fn may_run_queue(config: &Config) -> bool {
    let spool = Spool::new(&config.spool_dir);
    Uid::effective().is_root() || !spool.root().exists() || spool.is_owned_by_us()
}

/// Asks the running daemon through its socket: `None` when no daemon answers.
fn ask_daemon(config: &Config, what: &str) -> Result<Option<String>, SendmailError> {
    showq::request(&config.spool_dir, what).map_err(SendmailError::Queue)
}

/// `sendmail -q`: deliver what is waiting now, ignoring the backoff schedule.
fn run_queue(config: &Config, summary: bool, output: &mut dyn Write) -> Result<(), SendmailError> {
    if !may_run_queue(config) {
        // Anyone may ask the running daemon to run the queue now, as Postfix's flush
        // service allows; it goes on in the background.
        if ask_daemon(config, "flush")?.is_some() {
            log::info!("queue run: asked the daemon to deliver what waits now");
            if summary {
                write_output(
                    output,
                    b"the daemon is delivering the waiting messages now\n",
                )?;
            }
            return Ok(());
        }
        return Err(SendmailError::MailSystemDown);
    }
    let report = if Spool::new(&config.spool_dir).root().exists() {
        crate::deliver::run_once(config, true).map_err(queue_error)?
    } else {
        // Nothing was ever spooled on this box.
        crate::deliver::RunReport::default()
    };
    log::info!(
        "queue run: delivered={} deferred={} failed={} waiting={}",
        report.delivered,
        report.deferred,
        report.failed,
        report.waiting
    );
    if !summary {
        return Ok(());
    }
    let mut text = format!(
        "delivered {}, deferred {}, failed {}",
        report.delivered, report.deferred, report.failed
    );
    if report.waiting > 0 {
        // Not tried: behind a deferred message, or not due yet.
        text.push_str(&format!(", {} more waiting", report.waiting));
    }
    text.push('\n');
    write_output(output, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_sysexit() {
        let io = || io::Error::other("x");
        let cases: Vec<(SendmailError, u8)> = vec![
            (SendmailError::Usage(ArgsError::MissingValue('f')), 64),
            (SendmailError::NoRecipientsGiven, 64),
            (SendmailError::NoRecipients, 64),
            (SendmailError::TooManyRecipients { limit: 1 }, 64),
            (SendmailError::Input(io()), 65),
            (SendmailError::TooLarge { limit: 1 }, 65),
            (
                SendmailError::Submit(SubmitError::CannotQueue {
                    bridge: Some("connection refused".into()),
                    dir: PathBuf::from("/var/spool/smtp_bridge/maildrop"),
                    source: io(),
                }),
                75,
            ),
            (SendmailError::Queue(io()), 75),
            (SendmailError::QueuePermission(io()), 77),
            (SendmailError::MailSystemDown, 69),
            (SendmailError::Session(io()), 74),
            (SendmailError::Output(io()), 74),
            (
                SendmailError::Privileges {
                    step: "setuid",
                    source: nix::Error::EPERM,
                },
                71,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.exit_code(), code, "{error}");
            let text = error.to_string();
            assert!(!text.contains('\n'), "one line: {text}");
            assert!(
                text.starts_with(|c: char| !c.is_uppercase()),
                "lowercase: {text}"
            );
        }
    }

    #[test]
    fn spool_errors_sort_by_rights() {
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(queue_error(denied).exit_code(), sysexits::EX_NOPERM);
        let other = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(queue_error(other).exit_code(), sysexits::EX_TEMPFAIL);
    }
}
