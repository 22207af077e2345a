//! Submission: hand one message to the bridge directly, or make it durable in the spool.
//!
//! The shim exits 0 only once the owner has the digest or the message is fsync'd in the
//! spool, so a bridge that is down, erroring or hanging is invisible to callers, as a
//! queueing MTA's downtime is. When delivery is already backed up, new mail goes straight to
//! the spool behind the waiting messages, so that it does not overtake them in the chat.
//! Shared by stdin submissions and `sendmail -bs`.

use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;

use crate::bridge::{Bridge, Outcome};
use crate::config::Config;
use crate::digest::{Digest, DigestOptions, MAX_PARSE_BYTES};
use crate::envelope::{Envelope, Origin};
use crate::spool::{QueueId, Spool, SpoolWriter};

/// Where a submitted message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// The bridge accepted its digest; nothing was spooled. The ID names it in the log.
    Delivered(QueueId),
    /// It is safe in the spool and will be delivered from there.
    Queued(QueueId),
}

impl SubmitOutcome {
    /// The message's queue ID.
    pub fn id(&self) -> &QueueId {
        match self {
            SubmitOutcome::Delivered(id) | SubmitOutcome::Queued(id) => id,
        }
    }
}

/// Why a message could be neither delivered nor spooled.
#[derive(Debug)]
#[non_exhaustive]
pub enum SubmitError {
    /// Occurs when the bridge did not take the message (or was not tried because delivery
    /// is backed up) and writing it to the spool failed too.
    CannotQueue {
        /// Why the bridge did not take it; `None` when it was not tried.
        bridge: Option<String>,
        /// The directory the message was to be written in (`queue/` or `maildrop/`).
        dir: PathBuf,
        /// The spool error.
        source: io::Error,
    },
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::CannotQueue {
                bridge: Some(why),
                dir,
                source,
            } => write!(
                f,
                "{}: {source} (and the bridge failed: {why})",
                dir.display()
            ),
            SubmitError::CannotQueue {
                bridge: None,
                dir,
                source,
            } => write!(f, "{}: {source}", dir.display()),
        }
    }
}

impl std::error::Error for SubmitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SubmitError::CannotQueue { source, .. } => Some(source),
        }
    }
}

/// A message whose start is in memory and whose rest was streamed to a maildrop file (or
/// lost because that file could not be written), for messages larger than the digest ever
/// reads.
#[derive(Debug)]
pub enum Tail {
    /// The rest, in an uncommitted spool file that also holds the start.
    Spooled(SpoolWriter),
    /// No maildrop file could be written; only the bridge can take the message now.
    Unspooled(io::Error),
}

impl Tail {
    /// Opens the spool file for a large message and writes its start into it.
    pub fn open(spool: &Spool, envelope: &Envelope, start: &[u8]) -> Tail {
        match start_message(spool, envelope).and_then(|mut w| w.write_all(start).map(|()| w)) {
            Ok(writer) => Tail::Spooled(writer),
            Err(e) => Tail::Unspooled(e),
        }
    }

    /// Appends more of the message; after a write error the file is given up (dropping an
    /// uncommitted writer removes it) and the error kept for the report.
    pub fn write(&mut self, bytes: &[u8]) {
        if let Tail::Spooled(writer) = self {
            if let Err(e) = writer.write_all(bytes) {
                *self = Tail::Unspooled(e);
            }
        }
    }
}

/// Starts a spool file: in `queue/` when this process owns the spool (root, after becoming
/// the owner, or the daemon user itself), so the envelope's origin is kept as written; in
/// `maildrop/` for everyone else, whose files the queue runner takes in as untrusted, with
/// the origin replaced by the file owner's uid.
/// Where [`start_message`] writes: `queue/` for the spool's owner, `maildrop/` for others.
fn spool_area(spool: &Spool) -> PathBuf {
    let area = if spool.is_owned_by_us() {
        "queue"
    } else {
        "maildrop"
    };
    spool.root().join(area)
}

fn start_message(spool: &Spool, envelope: &Envelope) -> io::Result<SpoolWriter> {
    if spool.is_owned_by_us() {
        spool.create(envelope)
    } else {
        spool.create_maildrop(envelope)
    }
}

/// Submits a message held in memory: to the bridge unless delivery is backed up, else (or
/// when the bridge fails) into the spool.
pub fn submit(
    config: &Config,
    envelope: &Envelope,
    raw: &[u8],
) -> Result<SubmitOutcome, SubmitError> {
    let spool = Spool::new(&config.spool_dir);
    let size = raw.len() as u64;
    let bridge = attempt(config, &spool, envelope, raw, size);
    if bridge.is_none() {
        let id = QueueId::generate();
        log_submission(&id, envelope, size, "sent (the bridge accepted the digest)");
        return Ok(SubmitOutcome::Delivered(id));
    }
    let spooled = start_message(&spool, envelope)
        .and_then(|mut w| w.write_all(raw).map(|()| w))
        .and_then(SpoolWriter::commit);
    finish(&spool, spooled, bridge, envelope, size)
}

/// Submits a large message whose start is `start` and whose whole (`total` bytes) is also in
/// `tail`: the bridge gets the digest of the start; the maildrop file is committed when the
/// bridge does not take it, and discarded when it does.
pub fn submit_streamed(
    config: &Config,
    envelope: &Envelope,
    start: &[u8],
    total: u64,
    tail: Tail,
) -> Result<SubmitOutcome, SubmitError> {
    let spool = Spool::new(&config.spool_dir);
    let bridge = attempt(config, &spool, envelope, start, total);
    if bridge.is_none() {
        // Dropping the uncommitted maildrop file removes it.
        drop(tail);
        let id = QueueId::generate();
        log_submission(
            &id,
            envelope,
            total,
            "sent (the bridge accepted the digest)",
        );
        return Ok(SubmitOutcome::Delivered(id));
    }
    let spooled = match tail {
        Tail::Spooled(writer) => writer.commit(),
        Tail::Unspooled(e) => Err(e),
    };
    finish(&spool, spooled, bridge, envelope, total)
}

/// The bridge attempt: `None` when the bridge took the digest, otherwise why not (a
/// backlog skips the attempt). The digest is built from the envelope alone (the `-F` full
/// name included), as the queue runner builds it from the spooled copy.
fn attempt(
    config: &Config,
    spool: &Spool,
    envelope: &Envelope,
    raw: &[u8],
    total: u64,
) -> Option<BridgeMiss> {
    if !config.has_bridge() {
        return Some(BridgeMiss::NoConfiguration);
    }
    if spool.has_backlog() || spool.maildrop_marked() {
        return Some(BridgeMiss::Backlog);
    }
    let opts = DigestOptions {
        max_body_chars: config.max_body_chars,
        hostname: config.hostname.clone(),
    };
    let parse = &raw[..raw.len().min(MAX_PARSE_BYTES)];
    let digest = Digest::build(parse, total, envelope, &opts);
    let bridge = Bridge::new(&config.queue, &config.name, config.sendmail_timeout);
    match bridge.send(&digest.render()) {
        Outcome::Delivered => None,
        Outcome::Retry(why) => Some(BridgeMiss::Failed(why)),
        Outcome::Permanent(why) => Some(BridgeMiss::Failed(format!("{why} (check the queue URL)"))),
    }
}

/// Why the bridge did not take a message.
#[derive(Debug)]
enum BridgeMiss {
    /// Delivery is backed up: the message queues behind the others.
    Backlog,
    /// The configuration could not be used ([`Config::rescue`]): the bridge is not tried.
    NoConfiguration,
    /// The bridge was tried and failed.
    Failed(String),
}

fn finish(
    spool: &Spool,
    spooled: io::Result<QueueId>,
    bridge: Option<BridgeMiss>,
    envelope: &Envelope,
    size: u64,
) -> Result<SubmitOutcome, SubmitError> {
    let (why, status) = match bridge {
        Some(BridgeMiss::Failed(why)) => {
            let status = format!("deferred (bridge: {why}), spooled for retry");
            (Some(why), status)
        }
        Some(BridgeMiss::NoConfiguration) => (
            None,
            "queued (the configuration could not be used; the bridge was not tried)".to_owned(),
        ),
        _ => (
            None,
            "queued (delivery is backed up; waiting behind earlier mail)".to_owned(),
        ),
    };
    match spooled {
        Ok(id) => {
            log_submission(&id, envelope, size, &status);
            if let (Some(why), true) = (&why, spool.is_owned_by_us()) {
                // In queue/ (root): its retry state says what the bridge said, for mailq, and
                // counts this attempt; it stays due at once, so the daemon, which sees the
                // mark within a second, tries it again then, not after a backoff.
                let now = std::time::SystemTime::now();
                if let Err(e) = spool.defer(&id, now, &format!("sendmail: {why}")) {
                    log::debug!("{id}: cannot record the attempt: {e}");
                }
            }
            // Whoever submits next must not overtake it (left in maildrop/), and the daemon,
            // which looks for the mark every second, takes it up now (in queue/ too, where
            // it would otherwise wait for the daemon's next look at an idle spool). After
            // the retry state, so that the daemon does not deliver it before that is
            // written, which would leave the state behind.
            if let Err(e) = spool.mark_maildrop() {
                log::warn!("{id}: cannot mark the maildrop: {e}");
            }
            if why.is_some() {
                // Until the queue drains, later mail must queue behind this one instead of
                // overtaking it when the bridge comes back. Only the spool owner may set
                // the mark; for anyone else the queue runner sets it on its first failure.
                if let Err(e) = spool.set_backlog(true) {
                    log::debug!("{id}: cannot mark the backlog: {e}");
                }
            }
            Ok(SubmitOutcome::Queued(id))
        }
        Err(source) => {
            let dir = spool_area(spool);
            log::error!(
                "from=<{}> size={size} nrcpt={} status=tempfail (cannot queue message in {}: {source}{})",
                crate::spool::escape(envelope.sender.as_bytes()),
                envelope.recipients.len(),
                dir.display(),
                why.as_deref()
                    .map(|w| format!("; bridge: {w}"))
                    .unwrap_or_default()
            );
            Err(SubmitError::CannotQueue {
                bridge: why,
                dir,
                source,
            })
        }
    }
}

fn log_submission(id: &QueueId, envelope: &Envelope, size: u64, status: &str) {
    log::info!("{}", submission_line(id, envelope, size, status));
}

/// The log line of one submission, without a level or ident.
fn submission_line(id: &QueueId, envelope: &Envelope, size: u64, status: &str) -> String {
    let who = match &envelope.origin {
        Origin::Local { uid, .. } => format!("uid={uid}"),
        Origin::Smtp { peer, .. } => format!("client={peer}"),
    };
    format!(
        "{id}: {who} from=<{}> size={size} nrcpt={} status={status}",
        // The sender is the caller's text: escaped as spool.rs and deliver.rs log it, so it
        // can neither end the line nor forge a field.
        crate::spool::escape(envelope.sender.as_bytes()),
        envelope.recipients.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_field_forgery_sender_is_escaped() {
        let envelope = Envelope {
            sender: "a> size=0 status=sent\nFAKE: from=<x".into(),
            recipients: vec!["r@x".into()],
            origin: Origin::Local {
                uid: 1000,
                user: "u".into(),
                full_name: None,
            },
            arrival: std::time::SystemTime::now(),
        };
        let id = QueueId::generate();
        let line = submission_line(&id, &envelope, 5, "sent");
        assert_eq!(
            line,
            format!(
                "{id}: uid=1000 from=<a>%20size=0%20status=sent%0AFAKE:%20from=<x> size=5 \
                 nrcpt=1 status=sent"
            )
        );
    }
}
