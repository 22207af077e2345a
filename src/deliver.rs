//! Delivery: drains the spool through the bridge, oldest first, with capped exponential
//! backoff and a lifetime after which a message moves to `failed/`.
//!
//! # Order
//!
//! Messages reach the chat in the order they were accepted, so nothing overtakes a waiting
//! message: a pass walks `queue/` oldest first and stops at the first message that is not
//! due yet or that the bridge did not take. Only a message whose lifetime has run out steps
//! aside (to `failed/`), letting the next one through.
//!
//! # Schedule
//!
//! After `n` failed attempts the next one waits [`backoff`]`(n)`: 10 s, 20 s, 40 s, 80 s,
//! 160 s, 320 s, then 10 minutes for good. A message that fails once it is older than
//! `queue_lifetime` (default 5 days) moves to `failed/` with the last reason. A permanent
//! answer (a 4xx other than 408 and 429: a wrong URL or a bug) follows the same schedule, so
//! that fixing the configuration is enough, but is logged as an error naming the likely cause.
//!
//! # Who runs the queue
//!
//! The daemon's [`DeliveryThread`] and `sendmail -q` both call [`run_once`]; the runner lock
//! of the spool makes sure only one of them walks the queue at a time, so a message is never
//! sent twice by two runners. The pass also maintains the spool's backlog marker, which tells
//! `sendmail` to queue new mail behind waiting messages instead of sending it first.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bridge::{Bridge, Outcome};
use crate::config::Config;
use crate::digest::{Digest, DigestOptions, MAX_PARSE_BYTES};
use crate::spool::{
    escape, spare_charge, QueueEntry, SpareKeeper, Spares, Spool, MAILDROP_MARK_POLL,
};

/// When a queued message is due: its scheduled attempt, unless that lies further ahead than
/// its backoff could have put it, which only a wall clock that stepped back can do (the
/// schedule was made by the old clock): then now, instead of holding the ordered queue for
/// as long as the clock went back.
fn due_time(entry: &QueueEntry, now: SystemTime) -> SystemTime {
    let furthest = now + backoff(entry.attempts) + Duration::from_secs(1);
    if entry.next_attempt > furthest {
        now
    } else {
        entry.next_attempt
    }
}

/// The wait after the first failure; each further failure doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest wait between two attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(600);
/// A message whose lifetime ran out goes to `failed/` only once it has also been tried this
/// many times (about five minutes of retries): a wall clock that stepped forward (a box
/// without a real-time clock, set right by NTP after boot, as often before its network is
/// up) must not send a whole backlog there at its first failure.
pub const MIN_ATTEMPTS_TO_EXPIRE: u32 = 6;
/// How long the delivery thread waits before trying again after a pass that failed on the
/// spool itself (a disk error, not the bridge).
const SPOOL_ERROR_RETRY: Duration = Duration::from_secs(60);
/// How often the delivery thread looks at an idle spool all the same. `sendmail` run by an
/// ordinary user leaves mail in the maildrop and cannot wake the daemon; it marks the
/// maildrop instead, which the thread looks for every
/// [`MAILDROP_MARK_POLL`](crate::spool::MAILDROP_MARK_POLL), so this only bounds the wait of
/// mail whose mark could not be made.
pub const MAILDROP_POLL: Duration = Duration::from_secs(30);
/// The disk the delivery thread's spare files may hold ([`Spares`]): 4096 files of a small
/// message, enough for a burst of that many to be delivered without freeing an inode.
pub const SPARE_BYTES: u64 = 16 << 20;
/// How long the delivery thread waits when another runner (`sendmail -q`) holds the lock.
const LOCKED_RETRY: Duration = Duration::from_secs(5);
/// How soon a maildrop that could not be taken in (a full disk) is tried again.
const MAILDROP_RETRY: Duration = Duration::from_secs(5);
/// How long mail queued after a maildrop message that cannot be taken in waits for it.
const MAILDROP_HOLD_LIMIT: Duration = Duration::from_secs(300);

/// What one pass over the queue did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Messages the bridge accepted (and that were removed from the queue).
    pub delivered: usize,
    /// Messages that were tried and are still waiting.
    pub deferred: usize,
    /// Messages moved to `failed/`.
    pub failed: usize,
    /// Messages still waiting, not tried in this pass (not due, or behind a failed one).
    pub waiting: usize,
    /// When the next attempt is due, if anything is waiting.
    pub next_due: Option<SystemTime>,
}

/// The delay before attempt `attempts + 1` after `attempts` failures: capped exponential.
///
/// 0 failures: none; then 10 s doubling per failure (10, 20, 40, 80, 160, 320 s), capped at
/// 10 minutes from the seventh failure on.
pub fn backoff(attempts: u32) -> Duration {
    if attempts == 0 {
        return Duration::ZERO;
    }
    // 10 s << 6 already exceeds the cap, so larger shifts need not be computed.
    let shift = (attempts - 1).min(6);
    (BACKOFF_BASE * (1u32 << shift)).min(BACKOFF_CAP)
}

/// Delivers what is due, in queue order. `force` ignores the backoff schedule (`sendmail -q`).
/// Ingests the maildrop first. Takes the runner lock; returns an empty report when another
/// process holds it.
pub fn run_once(config: &Config, force: bool) -> io::Result<RunReport> {
    run_pass(config, force, &AtomicBool::new(false), false, None).map(|pass| pass.report)
}

/// A pass as the delivery thread sees it: the report, plus what it needs to log state
/// changes and plan the next pass.
#[derive(Debug, Default)]
struct Pass {
    report: RunReport,
    /// Another runner held the lock: nothing was looked at.
    locked_out: bool,
    /// Why the last attempt of this pass failed, if one did.
    last_error: Option<String>,
    /// Whether that failure was a permanent answer (a 4xx: the configuration looks wrong).
    last_permanent: bool,
}

/// Delivered messages removed between two fsyncs of `queue/` (one more ends every pass).
const REMOVALS_PER_SYNC: usize = 64;

/// The removals of one pass, made durable in groups: an fsync of `queue/` per delivered
/// message was the largest system-call cost of delivery. Dropped (however the pass ends,
/// early `?` returns included) before the runner lock, it syncs what is still pending, so the
/// next runner never starts with undurable removals behind it. A crash in between can only
/// bring a delivered message back (a duplicate), never lose one.
///
/// With `spares` (the daemon, holding the right to keep them), a small delivered message's
/// file is kept for a new message instead of unlinked ([`Spool::retire_unsynced`]), and
/// handed over only once the directory fsync made that durable.
struct Removals<'a> {
    spool: &'a Spool,
    /// Unlinks (or attempts: a half-done removal counts) since the last directory fsync.
    unsynced: usize,
    spares: Option<(&'a Spares, &'a SpareKeeper)>,
    /// Files retired since the last directory fsync, with their lengths: not to be written
    /// over before it.
    retired: Vec<(std::path::PathBuf, u64)>,
}

impl Removals<'_> {
    /// Removes a delivered message, and fsyncs `queue/` every [`REMOVALS_PER_SYNC`] of them.
    fn remove(&mut self, entry: &QueueEntry) -> io::Result<()> {
        // Counted first: a removal that fails halfway may still have unlinked the message.
        self.unsynced += 1;
        match self.spares {
            Some((spares, _)) => {
                let pending: u64 = self.retired.iter().map(|(_, len)| spare_charge(*len)).sum();
                let room = spares.room().saturating_sub(pending);
                if let Some(spare) = self.spool.retire_unsynced(&entry.id, room)? {
                    self.retired.push(spare);
                }
            }
            None => self.spool.remove_unsynced(&entry.id)?,
        }
        if self.unsynced >= REMOVALS_PER_SYNC {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes every removal so far durable, then offers the retired files for reuse.
    fn sync(&mut self) -> io::Result<()> {
        if self.unsynced > 0 {
            let synced = match self.spares {
                // Through the descriptor held since the start, which sees every write error
                // on the directory since then, even one another fsync reported first.
                Some((_, keeper)) => keeper.sync_queue_dir(),
                None => self.spool.sync_queue_dir(),
            };
            if let Err(e) = synced {
                // Their renames may not be durable: never write over them, nor over any
                // spare retired later in this run.
                for (spare, _) in self.retired.drain(..) {
                    let _ = std::fs::remove_file(spare);
                }
                if let Some((spares, _)) = self.spares {
                    log::error!("spare files given up until restart: {e}");
                    spares.close();
                }
                return Err(e);
            }
            self.unsynced = 0;
        }
        if let Some((spares, _)) = self.spares {
            spares.give(std::mem::take(&mut self.retired));
        }
        Ok(())
    }
}

impl Drop for Removals<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            // Only a duplicate delivery after a crash is at stake.
            log::error!("cannot sync the queue directory after removals: {e}");
        }
    }
}

/// One pass; stops early (after the request in flight) when `stop` is set. With `quiet`
/// (the delivery thread already said the bridge is failing), deferrals are logged at debug
/// level only.
fn run_pass(
    config: &Config,
    force: bool,
    stop: &AtomicBool,
    quiet: bool,
    spares: Option<(&Spares, &SpareKeeper)>,
) -> io::Result<Pass> {
    let spool = Spool::new(&config.spool_dir);
    let Some(_lock) = spool.lock_runner(false)? else {
        log::debug!("queue run skipped: another runner holds the lock");
        return Ok(Pass {
            locked_out: true,
            ..Pass::default()
        });
    };
    // When the maildrop cannot be taken in (a full disk, no descriptors), what it holds
    // was still acknowledged: mail queued before the oldest of it can go out, mail queued
    // after waits for it (delivery keeps order) for a while, and the maildrop is tried
    // again soon.
    let (maildrop_stuck, held_from) = match spool.ingest_maildrop(config.max_message_size) {
        Ok(ingest) => {
            if ingest.accepted + ingest.refused > 0 {
                log::debug!(
                    "maildrop: accepted={}, refused={}",
                    ingest.accepted,
                    ingest.refused
                );
            }
            (false, None)
        }
        Err(e) => maildrop_hold(&spool, &e, SystemTime::now()),
    };
    // Read before the listing: more than this at the end means mail came in after it.
    let queued_before = spool.queued_by_this_process();
    // Only the IDs up front: a pass blocked behind a waiting message reads one header, not
    // the whole queue, however long the bridge has been down.
    let ids = spool.ids()?;
    let mut pass = Pass::default();
    // Declared after the runner lock, so dropped (and synced) before it is released.
    let mut removals = Removals {
        spool: &spool,
        unsynced: 0,
        spares,
        retired: Vec::new(),
    };
    let bridge = Bridge::new(&config.queue, &config.name, config.bridge_timeout);
    let options = DigestOptions {
        max_body_chars: config.max_body_chars,
        hostname: config.hostname.clone(),
    };
    let total = ids.len();
    for (index, id) in ids.iter().enumerate() {
        let remaining = total - index;
        let now = SystemTime::now();
        if let Some(from) = held_from {
            if id.time().is_none_or(|t| t >= from) {
                pass.report.waiting = remaining;
                pass.report.next_due = Some(now + MAILDROP_RETRY);
                break;
            }
        }
        // Opened once: the entry says whether it is due, the same file gives the message.
        let message = match spool.open(id) {
            Ok(message) => message,
            // Removed since the listing (by an administrator: runners hold the lock).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // Its header is damaged: it can never be delivered, and must not block the
                // queue. Kept in failed/ for a human.
                let reason = format!("unreadable spool file: {e}");
                spool.fail(id, &reason, false)?;
                log::error!("{id}: status=failed ({reason}); moved to failed/");
                pass.report.failed += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let next_attempt = due_time(&message.entry, now);
        if stop.load(Ordering::SeqCst) || (!force && next_attempt > now) {
            pass.report.waiting = remaining;
            pass.report.next_due = Some(next_attempt.max(now));
            break;
        }
        let (entry, raw) = message.read(MAX_PARSE_BYTES)?;
        let digest = Digest::build(&raw, entry.size, &entry.envelope, &options);
        drop(raw);
        let started = Instant::now();
        let outcome = bridge.send(&digest.render());
        let (reason, permanent) = match outcome {
            Outcome::Delivered => {
                removals.remove(&entry)?;
                log::info!(
                    "{}: {}, relay=bridge, delay={}, attempts={}, status=sent (accepted by the bridge in {} ms)",
                    entry.id,
                    recipients_field(&entry),
                    delay(&entry, now),
                    entry.attempts + 1,
                    started.elapsed().as_millis()
                );
                pass.report.delivered += 1;
                continue;
            }
            Outcome::Retry(reason) => (reason, false),
            Outcome::Permanent(reason) => (reason, true),
        };
        let reason = escape_reason(&reason);
        pass.last_error = Some(reason.clone());
        pass.last_permanent = permanent;
        let age = now
            .duration_since(entry.envelope.arrival)
            .unwrap_or(Duration::ZERO);
        if age >= config.queue_lifetime && entry.attempts + 1 >= MIN_ATTEMPTS_TO_EXPIRE {
            let why = format!(
                "{reason}; gave up after {} attempts over {}",
                entry.attempts + 1,
                human(age)
            );
            spool.fail(&entry.id, &why, true)?;
            log::error!(
                "{}: {}, delay={}, status=failed ({why}); moved to failed/",
                entry.id,
                recipients_field(&entry),
                delay(&entry, now),
            );
            pass.report.failed += 1;
            continue;
        }
        let next = ceil_micros(now + backoff(entry.attempts.saturating_add(1)));
        spool.defer(&entry.id, next, &reason)?;
        let level = match (quiet, permanent) {
            (true, _) => log::Level::Debug,
            (false, true) => log::Level::Error,
            (false, false) => log::Level::Info,
        };
        if permanent {
            log::log!(
                level,
                "{}: {}, delay={}, status=deferred ({reason}); the bridge refused the request: the queue URL or name in the configuration looks wrong; retrying in {}",
                entry.id,
                recipients_field(&entry),
                delay(&entry, now),
                human(next.duration_since(now).unwrap_or(Duration::ZERO))
            );
        } else {
            log::log!(
                level,
                "{}: {}, delay={}, status=deferred ({reason}); retrying in {}",
                entry.id,
                recipients_field(&entry),
                delay(&entry, now),
                human(next.duration_since(now).unwrap_or(Duration::ZERO))
            );
        }
        pass.report.deferred += 1;
        // Nothing overtakes a waiting message.
        pass.report.waiting = remaining - 1;
        pass.report.next_due = Some(next);
        break;
    }
    removals.sync()?;
    if maildrop_stuck {
        // Try the maildrop again soon, whatever else waits (or not), held or not: what is
        // left there goes out as soon as there is room.
        let retry = SystemTime::now() + MAILDROP_RETRY;
        pass.report.next_due = Some(pass.report.next_due.map_or(retry, |at| at.min(retry)));
    }
    let left = pass.report.deferred + pass.report.waiting + usize::from(held_from.is_some());
    // Mail the daemon accepted during the pass waits too: no need to list queue/ again to
    // know that (under load, nearly every pass).
    let newer = spool.queued_by_this_process() != queued_before;
    if let Err(e) = spool.settle_backlog(left > 0 || newer) {
        log::warn!("cannot update the backlog marker: {e}");
    }
    Ok(pass)
}

/// What an ingestion that failed with `error` at `now` means for this pass: whether the
/// maildrop still holds messages (it is then tried again soon), and from when mail queued
/// later waits for them: behind the oldest message dropped off within the last
/// [`MAILDROP_HOLD_LIMIT`]. Order first, then, for a message stuck longer (one that needs
/// more room than the disk has, its copy beside it), liveness: the rest goes out ahead of
/// it, which the log says. The limit is the stuck message's own age (its inode change
/// time), not this process's memory, so it holds for `sendmail -q` from cron and across
/// restarts alike, and nobody's mail waits longer than that behind anyone else's. Logged at
/// error level once per stuck message and [`MAILDROP_HOLD_LIMIT`], not at every retry.
fn maildrop_hold(spool: &Spool, error: &io::Error, now: SystemTime) -> (bool, Option<SystemTime>) {
    static LOGGED: std::sync::Mutex<Option<(Option<SystemTime>, Instant)>> =
        std::sync::Mutex::new(None);
    let window = now.checked_sub(MAILDROP_HOLD_LIMIT).unwrap_or(UNIX_EPOCH);
    let left = match spool.maildrop_left(window) {
        Ok(left) if left.entries == 0 => {
            log::error!("cannot ingest the maildrop: {error}");
            return (false, None);
        }
        Ok(left) => left,
        // Not even its listing: what it holds may be as old as the hold allows.
        Err(e) => {
            log::error!(
                "cannot ingest the maildrop: {error}; nor list it: {e}; retrying in {}",
                human(MAILDROP_RETRY)
            );
            return (true, Some(window));
        }
    };
    let at = Instant::now();
    let mut logged = LOGGED.lock().unwrap_or_else(|p| p.into_inner());
    let fresh = logged.is_none_or(|(key, last)| {
        key != left.oldest_recent || at.duration_since(last) >= MAILDROP_HOLD_LIMIT
    });
    if fresh {
        *logged = Some((left.oldest_recent, at));
        match left.oldest_recent {
            Some(_) => log::error!(
                "cannot ingest the maildrop: {error}; {} message(s) ({} bytes) left in it; mail queued after the oldest of them waits for it for up to {} after it was dropped off; retrying every {}",
                left.entries,
                left.bytes,
                human(MAILDROP_HOLD_LIMIT),
                human(MAILDROP_RETRY)
            ),
            None => log::warn!(
                "cannot ingest the maildrop: {error}; its {} message(s) have waited longer than {}: later mail goes out ahead of them; they follow once there is room",
                left.entries,
                human(MAILDROP_HOLD_LIMIT)
            ),
        }
    } else {
        log::debug!("cannot ingest the maildrop: {error}");
    }
    (true, left.oldest_recent)
}

/// `t` rounded up to the microsecond, the precision the spool keeps, so that the time in the
/// report is the one on disk and never earlier than the backoff asks.
fn ceil_micros(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d.subsec_nanos() % 1000 != 0 => {
            t + Duration::from_nanos(u64::from(1000 - d.subsec_nanos() % 1000))
        }
        _ => t,
    }
}

/// `to=<a@b>` for a log line: the first recipient and how many there are in all.
fn recipients_field(entry: &QueueEntry) -> String {
    let rcpts = &entry.envelope.recipients;
    match rcpts.first() {
        None => "to=<>, nrcpt=0".to_owned(),
        Some(first) => format!("to=<{}>, nrcpt={}", escape(first.as_bytes()), rcpts.len()),
    }
}

/// Seconds since arrival, as Postfix's `delay=`.
fn delay(entry: &QueueEntry, now: SystemTime) -> u64 {
    now.duration_since(entry.envelope.arrival)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A reason from the bridge client, kept printable for one log line.
fn escape_reason(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A duration for humans: `45s`, `10m`, `2h13m`, `5d0h`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// What the delivery thread is told.
#[derive(Debug)]
enum Command {
    Nudge,
    /// Deliver what waits now, ignoring retry delays (`sendmail -q` by any user).
    Flush,
    Reload(Box<Config>),
    Shutdown,
}

/// What another thread of the daemon (the `showq` server) may ask of the delivery thread;
/// see [`DeliveryThread::handle`].
#[derive(Debug, Clone)]
pub struct DeliveryHandle {
    commands: Sender<Command>,
    nudged: Arc<AtomicBool>,
    max_message_size: Arc<AtomicU64>,
}

impl DeliveryHandle {
    /// Deliver what waits now, ignoring retry delays. Never blocks; false when the delivery
    /// thread is gone.
    pub fn flush(&self) -> bool {
        self.commands.send(Command::Flush).is_ok()
    }

    /// New mail is in the queue: run a pass soon (nothing overtakes a waiting message).
    pub fn nudge(&self) {
        nudge(&self.commands, &self.nudged);
    }

    /// `max_message_size` as the delivery thread has it now (a reload may change it), the
    /// limit for taking the maildrop in.
    pub fn max_message_size(&self) -> u64 {
        self.max_message_size.load(Ordering::Relaxed)
    }
}

/// Asks for a pass, never blocking: only one nudge waits in the channel at a time, and the
/// pass it starts sees all mail committed before it.
fn nudge(commands: &Sender<Command>, nudged: &AtomicBool) {
    if !nudged.swap(true, Ordering::SeqCst) {
        let _ = commands.send(Command::Nudge);
    }
}

/// The daemon's background delivery thread.
///
/// It runs a pass at start, whenever it is nudged (new mail), when the head of the queue is
/// due again, after a reload, within a second of the maildrop being marked, and every
/// [`MAILDROP_POLL`] while idle.
/// While the head of the queue waits for its next attempt, nudges start no pass: new mail
/// cannot overtake it, and a pass would only list the whole queue again (with the bridge
/// down for hours, once per arriving message). It logs state changes once: a warning when the bridge starts failing (an
/// error when it refuses our requests, which points at the configuration) and an info line
/// when it takes messages again. Retries in between are logged at debug level only.
#[derive(Debug)]
pub struct DeliveryThread {
    commands: Sender<Command>,
    /// Set while a nudge is queued and not yet picked up, so nudges coalesce.
    nudged: Arc<AtomicBool>,
    /// Tells a pass in progress to stop after the request in flight.
    stop: Arc<AtomicBool>,
    /// Passes run so far.
    passes: Arc<AtomicU64>,
    /// Files of delivered messages, for the daemon's new ones.
    spares: Arc<Spares>,
    /// The configuration's `max_message_size`, as of the last reload.
    max_message_size: Arc<AtomicU64>,
    /// Receives one message when the thread has ended.
    finished: Receiver<()>,
    handle: Option<JoinHandle<()>>,
}

impl DeliveryThread {
    /// Starts the thread; it runs passes when nudged and when the next attempt is due.
    pub fn spawn(config: Config) -> io::Result<DeliveryThread> {
        DeliveryThread::spawn_polling(config, MAILDROP_POLL)
    }

    /// [`DeliveryThread::spawn`] with another interval between two looks at an idle spool
    /// than [`MAILDROP_POLL`] (tests; a box that wants local mail picked up sooner).
    pub fn spawn_polling(config: Config, poll: Duration) -> io::Result<DeliveryThread> {
        let (commands, inbox) = mpsc::channel();
        let (done, finished) = mpsc::channel();
        let nudged = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let passes = Arc::new(AtomicU64::new(0));
        let spares = Arc::new(Spares::new(SPARE_BYTES));
        let max_message_size = Arc::new(AtomicU64::new(config.max_message_size));
        let handle = {
            let (nudged, stop, passes) = (nudged.clone(), stop.clone(), passes.clone());
            let spares = spares.clone();
            let limit = max_message_size.clone();
            thread::Builder::new()
                .name("delivery".into())
                .spawn(move || {
                    let current = std::sync::Mutex::new(config);
                    let shared = Shared {
                        nudged: &nudged,
                        stop: &stop,
                        passes: &passes,
                        spares: &spares,
                        max_message_size: &limit,
                        current: &current,
                    };
                    supervise(&stop, RESTART_AFTER_PANIC, || {
                        let config = current
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .clone();
                        run_thread(config, poll, &inbox, &shared)
                    });
                    let _ = done.send(());
                })?
        };
        Ok(DeliveryThread {
            commands,
            nudged,
            stop,
            passes,
            spares,
            max_message_size,
            finished,
            handle: Some(handle),
        })
    }

    /// New mail was committed: run a pass soon. Never blocks.
    pub fn nudge(&self) {
        nudge(&self.commands, &self.nudged);
    }

    /// A handle through which another thread asks this one for passes.
    pub fn handle(&self) -> DeliveryHandle {
        DeliveryHandle {
            commands: self.commands.clone(),
            nudged: self.nudged.clone(),
            max_message_size: self.max_message_size.clone(),
        }
    }

    /// How many passes the thread has run (started) so far: for tests and diagnostics.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::SeqCst)
    }

    /// The files this thread keeps from delivered messages, for the spool worker to write new
    /// messages over ([`Spool::create_reusing`]).
    pub fn spares(&self) -> Arc<Spares> {
        self.spares.clone()
    }

    /// Use a new configuration from the next pass on (SIGHUP), which runs at once.
    pub fn reload(&self, config: Config) {
        let _ = self.commands.send(Command::Reload(Box::new(config)));
    }

    /// Asks the thread to stop after the request in flight, and waits for it at most `grace`.
    ///
    /// A request to a hanging bridge lasts at most `bridge_timeout`; when `grace` is shorter
    /// the thread is left to finish on its own (the message stays queued either way).
    pub fn shutdown(mut self, grace: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.commands.send(Command::Shutdown);
        match self.finished.recv_timeout(grace) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(handle) = self.handle.take() {
                    let _ = handle.join();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                log::warn!(
                    "delivery thread still busy after {}; not waiting for it",
                    human(grace)
                );
            }
        }
    }
}

/// Whether the bridge is taking messages, as far as the thread last saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BridgeState {
    /// No attempt yet.
    Unknown,
    /// The last attempt was delivered.
    Up,
    /// The last attempt failed; `permanent` when the bridge refused the request (4xx).
    Failing { permanent: bool },
}

/// How much nicer than the rest of the daemon the delivery thread runs. Clients wait for
/// their `250` (and hold their connections meanwhile); a digest may reach the chat a moment
/// later. So when the CPU is short, the scheduler gives the threads that serve SMTP clients
/// and commit their mail the larger share: at nice 10, the delivery thread gets about a
/// tenth of a contended core (far more than the real bridge's one message a second needs),
/// and all of an idle one.
pub const DELIVERY_NICENESS: i32 = 10;

/// Raises the calling thread's nice value by `by` (capped at 19). Linux keeps one per thread.
pub(crate) fn lower_own_priority(by: i32) -> io::Result<()> {
    use nix::libc;
    let tid = nix::unistd::gettid().as_raw() as libc::id_t;
    nix::errno::Errno::clear();
    // SAFETY: integers in, an integer out; with PRIO_PROCESS and a thread ID, Linux reads and
    // changes that thread only.
    let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    if now == -1 && nix::errno::Errno::last_raw() != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, (now + by).min(19)) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What the delivery thread shares with its [`DeliveryThread`] and [`DeliveryHandle`]s.
#[derive(Clone, Copy)]
struct Shared<'a> {
    nudged: &'a AtomicBool,
    stop: &'a AtomicBool,
    passes: &'a AtomicU64,
    spares: &'a Spares,
    max_message_size: &'a AtomicU64,
    /// The configuration of the last reload, for a thread started over after a panic.
    current: &'a std::sync::Mutex<Config>,
}

/// How long the delivery thread rests after a panic before it starts over.
const RESTART_AFTER_PANIC: Duration = Duration::from_secs(10);

/// Runs `run` until it returns; when it panics (a bug: nothing in a pass should), logs it
/// and starts it over after `rest`, so that the daemon does not go on answering 250 with
/// nothing delivering its mail. What was queued stays queued; a stop ends the rest early.
fn supervise(stop: &AtomicBool, rest: Duration, mut run: impl FnMut()) {
    loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut run)) {
            Ok(()) => return,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                log::error!(
                    "delivery: the delivery thread panicked ({}); starting it over in {}",
                    escape(what.as_bytes()),
                    human(rest)
                );
                let until = Instant::now() + rest;
                while Instant::now() < until {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    thread::sleep(rest.min(Duration::from_millis(100)));
                }
            }
        }
    }
}

fn run_thread(mut config: Config, poll: Duration, inbox: &Receiver<Command>, shared: &Shared<'_>) {
    let Shared {
        nudged,
        stop,
        passes,
        spares,
        max_message_size,
        current,
    } = *shared;
    if let Err(e) = lower_own_priority(DELIVERY_NICENESS) {
        // A seccomp filter without setpriority (see the shipped unit), say.
        log::info!("delivery: cannot lower its CPU priority ({e}): it shares the CPU with clients");
    }
    // The right to keep spare files, and those the last run left, before the first pass.
    let keeper = match Spool::new(&config.spool_dir).keep_spares(spares) {
        Ok(Some(keeper)) => {
            if keeper.adopted() > 0 {
                log::debug!("delivery: took up {} spare files", keeper.adopted());
            }
            Some(keeper)
        }
        Ok(None) => {
            log::warn!(
                "another process keeps the spare files of {} (spares.lock): delivered messages are removed instead",
                config.spool_dir.display()
            );
            None
        }
        Err(e) => {
            log::warn!("cannot keep spare files: {e}; delivered messages are removed instead");
            None
        }
    };
    let mut state = BridgeState::Unknown;
    // A pass at start delivers what the last run left behind.
    let mut due = Instant::now();
    // Set while the head of the queue waits for its next attempt (at `due`).
    let mut head_waits = false;
    loop {
        // Wake up every MAILDROP_MARK_POLL too, to look for mail an ordinary user dropped off.
        let wake = due.min(Instant::now() + MAILDROP_MARK_POLL);
        let command = match inbox.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Take everything already waiting, so that a burst of nudges is one pass.
        let timed_out = command.is_none();
        let mut commands: Vec<Command> = command.into_iter().collect();
        commands.extend(inbox.try_iter());
        if timed_out && commands.is_empty() && Instant::now() < due {
            // Woken early only for the maildrop's mark: a pass if mail waits there and the
            // head of the queue is not waiting for its own retry anyway.
            if head_waits || !Spool::new(&config.spool_dir).maildrop_marked() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
        }
        let mut reloaded = false;
        let mut flushed = false;
        for command in commands {
            match command {
                Command::Nudge => nudged.store(false, Ordering::SeqCst),
                Command::Flush => flushed = true,
                Command::Reload(new) => {
                    config = *new;
                    *current
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = config.clone();
                    max_message_size.store(config.max_message_size, Ordering::Relaxed);
                    reloaded = true;
                    log::info!("delivery: configuration reloaded");
                }
                Command::Shutdown => return,
            }
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        // Only nudges, and the head still waits: nothing could go out before it.
        if head_waits && !timed_out && !reloaded && !flushed && Instant::now() < due {
            continue;
        }
        let quiet = matches!(state, BridgeState::Failing { .. });
        passes.fetch_add(1, Ordering::SeqCst);
        // Spares belong to the spool they were taken up in (spool_dir needs a restart).
        let keeping = keeper
            .as_ref()
            .filter(|k| k.root() == config.spool_dir)
            .map(|k| (spares, k));
        // A reload, like a flush, tries what waits at once: the admin who fixed the bridge's
        // URL and reloaded should not wait for the next retry (up to BACKOFF_CAP).
        let result = run_pass(&config, flushed || reloaded, stop, quiet, keeping);
        head_waits =
            matches!(&result, Ok(pass) if !pass.locked_out && pass.report.next_due.is_some());
        due = match result {
            Ok(pass) if pass.locked_out => Instant::now() + LOCKED_RETRY,
            Ok(pass) => {
                let report = &pass.report;
                let reason = pass.last_error.as_deref().unwrap_or("unknown reason");
                let waiting = report.deferred + report.waiting;
                if report.deferred > 0 {
                    let failing = BridgeState::Failing {
                        permanent: pass.last_permanent,
                    };
                    if state != failing && pass.last_permanent {
                        log::error!(
                            "delivery paused: the bridge refuses our requests ({reason}): the queue URL or name in the configuration looks wrong; {waiting} message(s) waiting, retried every {} at most",
                            human(BACKOFF_CAP)
                        );
                    } else if state != failing {
                        log::warn!(
                            "delivery paused: the bridge is not taking messages ({reason}); {waiting} message(s) waiting, retried every {} at most",
                            human(BACKOFF_CAP)
                        );
                    }
                    state = failing;
                } else if report.delivered > 0 {
                    if quiet {
                        log::info!("delivery resumed: the bridge takes messages again");
                    }
                    state = BridgeState::Up;
                }
                // Nothing waiting: look again after `poll` all the same, for what `sendmail`
                // left in the maildrop (it cannot nudge us).
                match report.next_due {
                    Some(at) => {
                        Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
                    }
                    None => Instant::now() + poll,
                }
            }
            Err(e) => {
                log::error!(
                    "delivery pass failed: {e}; retrying in {}",
                    human(SPOOL_ERROR_RETRY)
                );
                Instant::now() + SPOOL_ERROR_RETRY
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Order first, but not for ever: a message stuck in the maildrop holds later mail back
    /// for MAILDROP_HOLD_LIMIT after it was dropped off, then no more; the maildrop is
    /// tried again soon either way, and an empty one holds nothing.
    #[test]
    fn a_hold_behind_the_maildrop_ends_after_its_limit() {
        let dir = std::env::temp_dir().join(format!("smtp_bridge-hold-{}", std::process::id()));
        let spool = Spool::new(&dir);
        spool.prepare(None).unwrap();
        let envelope = crate::envelope::Envelope {
            sender: "user@host".into(),
            recipients: vec!["root".into()],
            origin: crate::envelope::Origin::Local {
                uid: 1000,
                user: "user".into(),
                full_name: None,
            },
            arrival: SystemTime::now(),
        };
        let mut writer = spool.create_maildrop(&envelope).unwrap();
        std::io::Write::write_all(&mut writer, b"Subject: stuck\n\nx\n").unwrap();
        writer.commit_file().unwrap();
        let full = io::Error::from_raw_os_error(28);
        let now = SystemTime::now();
        let soon = maildrop_hold(&spool, &full, now);
        let later = maildrop_hold(
            &spool,
            &full,
            now + MAILDROP_HOLD_LIMIT + Duration::from_secs(1),
        );
        for entry in std::fs::read_dir(dir.join("maildrop")).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        let empty = maildrop_hold(&spool, &full, now);
        let _ = std::fs::remove_dir_all(&dir);
        let (stuck, held_from) = soon;
        assert!(stuck);
        assert!(
            held_from.is_some_and(|t| t <= now && t > now - MAILDROP_HOLD_LIMIT),
            "{soon:?}"
        );
        assert_eq!(later, (true, None), "held past the limit");
        assert_eq!(empty, (false, None));
    }

    #[test]
    fn a_panicking_delivery_thread_is_started_over() {
        let stop = AtomicBool::new(false);
        let mut runs = 0;
        supervise(&stop, Duration::from_millis(1), || {
            runs += 1;
            if runs < 3 {
                panic!("pass {runs} went wrong");
            }
        });
        assert_eq!(runs, 3);
        // A stop during the rest ends it.
        let stop = AtomicBool::new(true);
        let mut runs = 0;
        let started = Instant::now();
        supervise(&stop, Duration::from_secs(60), || {
            runs += 1;
            panic!("always");
        });
        assert_eq!(runs, 1);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_up_to_ten_minutes() {
        let table = [
            (0, 0),
            (1, 10),
            (2, 20),
            (3, 40),
            (4, 80),
            (5, 160),
            (6, 320),
            (7, 600),
            (8, 600),
            (100, 600),
            (u32::MAX, 600),
        ];
        for (attempts, secs) in table {
            assert_eq!(backoff(attempts), Duration::from_secs(secs), "{attempts}");
        }
    }

    #[test]
    fn human_durations() {
        let table = [
            (0, "0s"),
            (59, "59s"),
            (600, "10m0s"),
            (3661, "1h1m"),
            (432_000, "5d0h"),
        ];
        for (secs, text) in table {
            assert_eq!(human(Duration::from_secs(secs)), text);
        }
    }

    #[test]
    fn next_attempts_round_up_to_the_microsecond() {
        let t = |nanos: u64| UNIX_EPOCH + Duration::from_nanos(nanos);
        let table = [
            (0, 0),
            (1, 1000),
            (999, 1000),
            (1000, 1000),
            (1_000_001, 1_001_000),
        ];
        for (given, want) in table {
            assert_eq!(ceil_micros(t(given)), t(want), "{given}");
        }
    }

    #[test]
    fn reasons_stay_on_one_line() {
        assert_eq!(escape_reason("a\r\nb\tc"), "a  b c");
    }
}
