//! The spool worker: the thread that does the event loop's disk I/O, so that no write or
//! fsync ever blocks the loop.
//!
//! Jobs arrive over a channel in the order each connection produced them (open, writes,
//! commit or abort). Two threads share the work, so that writing never waits behind an fsync:
//!
//! - The worker (`spool`) handles every job that is ready: it creates and writes the files and
//!   acknowledges the written bytes at once (flow control only: the per-connection
//!   backpressure in the loop), then hands the batch's commits to the syncer and goes on
//!   writing other sessions' data while they are made durable.
//! - The syncer (`spool-sync`) takes every batch of commits queued, makes their files' data
//!   durable, either with one `syncfs` of the spool's file system for the whole batch or by
//!   having them fdatasync'd in parallel by a small pool of persistent threads (`spool-fsync`:
//!   the device takes concurrent syncs together; one after another they cost a sync each), as
//!   `spool_sync` says ([`SpoolSync`]; `auto` takes `syncfs` while the system holds little
//!   unwritten data, so that the batch cannot wait long behind other programs' writes),
//!   renames them into `queue/` in the order the commits arrived (so queue IDs keep that
//!   order), fsyncs the directory once (group commit: twenty sessions finishing DATA together
//!   share one `sync_queue_dir`), and only then sends the results and wakes the loop through its
//!   [`mio::Waker`]: a `250` always follows both fsyncs.
//!
//! Memory stays bounded: a connection has at most one commit in flight, so the syncer never
//! holds more pending files than there are connections.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::Waker;

use crate::config::SpoolSync;
use crate::envelope::Envelope;
use crate::spool::{syncfs_reports_errors, FsSync, QueueId, Spares, Spool, SpoolWriter};

/// Once a batch has written this many bytes, its commits are made durable and its results
/// sent, even if more jobs are waiting: commits do not wait behind other sessions' bulk data.
const BATCH_BYTES: usize = 1 << 20;

/// A job for the worker, tagged with the connection (its token) it belongs to.
#[derive(Debug)]
pub(crate) enum Job {
    /// Start a spool file for a new message.
    Open {
        conn: usize,
        /// The connection's log ID (`conn=ID`). The token is the loop's own key, counted
        /// apart from the log ID (a refused client takes an ID but no token), so the
        /// worker's log lines must use this to name the connection as the loop's lines do.
        log_id: u64,
        envelope: Box<Envelope>,
    },
    /// Append message bytes to the connection's open file.
    Write { conn: usize, data: Vec<u8> },
    /// The message is complete: make it durable and report its queue ID.
    Commit { conn: usize },
    /// Throw the open file away.
    Abort { conn: usize },
}

/// A committed message, as the loop logs it.
#[derive(Debug)]
pub(crate) struct Committed {
    /// The queue ID.
    pub id: QueueId,
    /// The envelope sender.
    pub sender: String,
    /// How many recipients.
    pub nrcpt: usize,
    /// Raw message size in bytes.
    pub size: u64,
}

/// What the worker reports back.
#[derive(Debug)]
pub(crate) enum Done {
    /// `bytes` of the connection's data were handled (written, or dropped after an error).
    Written { conn: usize, bytes: usize },
    /// The outcome of a commit: durable, or why not.
    Committed {
        conn: usize,
        result: Result<Committed, String>,
    },
}

/// The handle the loop keeps.
#[derive(Debug)]
pub(crate) struct SpoolWorker {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    handle: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
    sync_mode: Arc<SyncMode>,
}

/// The `spool_sync` setting, shared with the syncer so that a reload changes it at once.
#[derive(Debug)]
struct SyncMode(AtomicU8);

impl SyncMode {
    fn new(mode: SpoolSync) -> SyncMode {
        let m = SyncMode(AtomicU8::new(0));
        m.set(mode);
        m
    }

    fn set(&self, mode: SpoolSync) {
        let n = match mode {
            SpoolSync::File => 0,
            SpoolSync::Filesystem => 1,
            SpoolSync::Auto => 2,
        };
        self.0.store(n, Ordering::Relaxed);
    }

    fn get(&self) -> SpoolSync {
        match self.0.load(Ordering::Relaxed) {
            0 => SpoolSync::File,
            1 => SpoolSync::Filesystem,
            _ => SpoolSync::Auto,
        }
    }
}

/// How well group commit works, logged when the worker stops.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Messages made durable.
    pub commits: AtomicU64,
    /// Directory fsyncs it took.
    pub syncs: AtomicU64,
    /// Batches whose files were made durable with one `syncfs` (the others: fdatasyncs).
    pub fs_syncs: AtomicU64,
}

impl SpoolWorker {
    /// Starts the thread, making commits durable as `sync` says, and writing new messages over
    /// the delivery thread's `spares` when it has some.
    pub fn spawn(
        spool: Spool,
        sync: SpoolSync,
        waker: Arc<Waker>,
        spares: Arc<Spares>,
    ) -> io::Result<SpoolWorker> {
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let sync_mode = Arc::new(SyncMode::new(sync));
        let shared = Shared {
            stats: stats.clone(),
            sync_mode: sync_mode.clone(),
            spares,
        };
        let handle = thread::Builder::new()
            .name("spool".to_owned())
            .spawn(move || run(spool, jobs_rx, done_tx, waker, &shared))?;
        Ok(SpoolWorker {
            jobs: Some(jobs_tx),
            done: done_rx,
            handle: Some(handle),
            stats,
            sync_mode,
        })
    }

    /// Changes how later batches are made durable (a reload of `spool_sync`).
    pub fn set_sync(&self, sync: SpoolSync) {
        self.sync_mode.set(sync);
    }

    /// Counters of the work done so far.
    #[cfg(test)]
    fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Queues a job; gives it back when the worker is gone.
    pub fn send(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// The next result, if any: `None` both when nothing is ready and when the worker is
    /// gone (see [`SpoolWorker::is_gone`]).
    pub fn try_recv(&self) -> Option<Done> {
        self.done.try_recv().ok()
    }

    /// Whether the worker thread has ended (it only ends on its own if it panicked).
    pub fn is_gone(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Closes the job channel and waits at most `grace` for the worker to finish what it has
    /// (open files are aborted, which removes their temporary files).
    pub fn shutdown(mut self, grace: Duration) {
        self.jobs = None;
        loop {
            match self.done.recv_timeout(grace) {
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    log::warn!("spool worker did not stop within {grace:?}; leaving it");
                    return;
                }
            }
        }
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                log::error!("spool worker panicked");
            }
        }
        log::info!(
            "spool worker: {} messages committed with {} directory syncs ({} batches made durable with one syncfs)",
            self.stats.commits.load(Ordering::Relaxed),
            self.stats.syncs.load(Ordering::Relaxed),
            self.stats.fs_syncs.load(Ordering::Relaxed)
        );
    }
}

/// The state of one connection's message in the worker.
enum Slot {
    /// Being written.
    Writing {
        writer: SpoolWriter,
        sender: String,
        nrcpt: usize,
        log_id: u64,
    },
    /// Something failed; later writes are dropped and the commit reports this reason.
    Failed(String),
}

/// A commit asked for during a batch, kept in arrival order so queue IDs follow it and each
/// connection's results come back in the order it asked.
enum Commit {
    /// A complete message to make durable.
    Pending(Pending),
    /// A commit whose answer is already known: the message was never started or failed.
    Failed { conn: usize, reason: String },
}

/// A complete message waiting for its fdatasync and rename.
struct Pending {
    conn: usize,
    log_id: u64,
    writer: SpoolWriter,
    sender: String,
    nrcpt: usize,
}

/// Results gathered during one batch.
#[derive(Default)]
struct Batch {
    acks: HashMap<usize, usize>,
    commits: Vec<Commit>,
    bytes: usize,
}

/// What the worker's threads share with the handle.
struct Shared {
    stats: Arc<Stats>,
    sync_mode: Arc<SyncMode>,
    /// Files of delivered messages to write new ones over.
    spares: Arc<Spares>,
}

fn run(spool: Spool, jobs: Receiver<Job>, done: Sender<Done>, waker: Arc<Waker>, shared: &Shared) {
    let (commits_tx, commits_rx) = mpsc::channel::<Vec<Commit>>();
    thread::scope(|scope| {
        let started = thread::Builder::new()
            .name("spool-sync".to_owned())
            .spawn_scoped(scope, {
                let (spool, done, waker) = (&spool, done.clone(), waker.clone());
                move || syncer(spool, &commits_rx, &done, &waker, shared)
            });
        match started {
            Ok(_) => write_loop(&spool, &shared.spares, &jobs, commits_tx, &done, &waker),
            // The worker ends at once; the loop answers 452 to anyone waiting on it.
            Err(e) => log::error!("cannot start the spool sync thread: {e}"),
        }
    });
}

/// The worker's own loop: writes, acknowledges, and hands commits to the syncer.
fn write_loop(
    spool: &Spool,
    spares: &Spares,
    jobs: &Receiver<Job>,
    commits: Sender<Vec<Commit>>,
    done: &Sender<Done>,
    waker: &Waker,
) {
    let mut slots: HashMap<usize, Slot> = HashMap::new();
    while let Ok(first) = jobs.recv() {
        let mut batch = Batch::default();
        let mut next = Some(first);
        while let Some(job) = next {
            handle(spool, spares, &mut slots, &mut batch, job);
            if batch.bytes >= BATCH_BYTES {
                break;
            }
            next = match jobs.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => None,
            };
        }
        // Written, not durable: these only release backpressure, so they go at once. Every
        // one precedes the commit it belongs to, which the syncer answers later.
        if !batch.acks.is_empty() {
            if !batch
                .acks
                .into_iter()
                .all(|(conn, bytes)| done.send(Done::Written { conn, bytes }).is_ok())
            {
                break;
            }
            if let Err(e) = waker.wake() {
                log::error!("cannot wake the event loop: {e}");
            }
        }
        if !batch.commits.is_empty() && commits.send(batch.commits).is_err() {
            // The syncer stopped because the loop is gone.
            break;
        }
    }
    // The loop is gone: dropping the writers removes their temporary files. Dropping
    // `commits` lets the syncer finish what it was given and stop.
    slots.clear();
}

/// The syncer: makes every batch of commits queued durable as one group, reports and wakes
/// the loop, until the worker closes the channel or the loop is gone.
fn syncer(
    spool: &Spool,
    commits: &Receiver<Vec<Commit>>,
    done: &Sender<Done>,
    waker: &Waker,
    shared: &Shared,
) {
    let stats = &*shared.stats;
    let pool = SyncPool::start(SYNC_THREADS);
    let mut whole_fs = WholeFs::new(spool);
    while let Ok(mut group) = commits.recv() {
        // Batches that queued up while the last group was syncing share the next sync.
        while let Ok(more) = commits.try_recv() {
            group.extend(more);
        }
        let fs_sync = whole_fs.choose(shared.sync_mode.get());
        if fs_sync.is_some() {
            stats.fs_syncs.fetch_add(1, Ordering::Relaxed);
        }
        let outcomes = commit_all(&pool, fs_sync, group);
        if !finish(spool, outcomes, done, stats) {
            break;
        }
        if let Err(e) = waker.wake() {
            log::error!("cannot wake the event loop: {e}");
        }
    }
}

fn handle(
    spool: &Spool,
    spares: &Spares,
    slots: &mut HashMap<usize, Slot>,
    batch: &mut Batch,
    job: Job,
) {
    match job {
        Job::Open {
            conn,
            log_id,
            envelope,
        } => {
            let slot = match spool.create_reusing(&envelope, spares) {
                Ok(writer) => Slot::Writing {
                    writer,
                    sender: envelope.sender.clone(),
                    nrcpt: envelope.recipients.len(),
                    log_id,
                },
                Err(e) => {
                    log::error!("conn={log_id} cannot create spool file: {e}");
                    Slot::Failed(e.to_string())
                }
            };
            slots.insert(conn, slot);
        }
        Job::Write { conn, data } => {
            batch.bytes += data.len();
            *batch.acks.entry(conn).or_default() += data.len();
            if let Some(Slot::Writing { writer, log_id, .. }) = slots.get_mut(&conn) {
                if let Err(e) = writer.write_all(&data) {
                    log::error!("conn={log_id} cannot write spool file: {e}");
                    // Dropping the writer removes the partial file now, not at commit time,
                    // so a full disk gets its space back at once.
                    slots.insert(conn, Slot::Failed(e.to_string()));
                }
            }
        }
        Job::Commit { conn } => batch.commits.push(match slots.remove(&conn) {
            Some(Slot::Writing {
                writer,
                sender,
                nrcpt,
                log_id,
            }) => Commit::Pending(Pending {
                conn,
                log_id,
                writer,
                sender,
                nrcpt,
            }),
            Some(Slot::Failed(reason)) => Commit::Failed { conn, reason },
            None => Commit::Failed {
                conn,
                reason: "no message was started".to_owned(),
            },
        }),
        Job::Abort { conn } => {
            slots.remove(&conn);
        }
    }
}

/// `auto` makes a batch durable with `syncfs` only while the system holds at most this much
/// unwritten file data (`Dirty` + `Writeback` in /proc/meminfo, our own batch included): the
/// `syncfs` writes all of it out, so it stays short. Above it, fdatasyncs wait for our files
/// alone.
const AUTO_UNWRITTEN_LIMIT_KIB: u64 = 64 << 10;

/// How long `auto` keeps its last look at /proc/meminfo.
const AUTO_RECHECK: Duration = Duration::from_millis(50);

/// Decides, batch by batch, whether one `syncfs` of the spool's file system makes the files
/// durable (see [`SpoolSync`]).
struct WholeFs {
    /// `None` when `syncfs` cannot be trusted here (a kernel before 5.8 does not report
    /// write errors through it) or the spool's directory could not be opened for it.
    fs_sync: Option<FsSync>,
    /// Why `fs_sync` is `None`, said once when a setting asks for `syncfs`.
    unavailable: Option<String>,
    /// `auto`'s last look at the system's unwritten data: when, and whether it was little.
    last_look: Option<(Instant, bool)>,
    /// Set once `auto` said that it cannot read /proc/meminfo.
    meminfo_warned: bool,
}

impl WholeFs {
    fn new(spool: &Spool) -> WholeFs {
        let (fs_sync, unavailable) = if !syncfs_reports_errors() {
            (
                None,
                Some(
                    "this kernel's syncfs does not report write errors (Linux 5.8 or later needed)"
                        .to_owned(),
                ),
            )
        } else {
            match spool.fs_sync() {
                Ok(f) => match f.known_file_system() {
                    Ok(()) => (Some(f), None),
                    Err(why) => (None, Some(why)),
                },
                Err(e) => (
                    None,
                    Some(format!("cannot open the queue directory for syncfs: {e}")),
                ),
            }
        };
        WholeFs {
            fs_sync,
            unavailable,
            last_look: None,
            meminfo_warned: false,
        }
    }

    /// The `syncfs` handle when this batch should use it, `None` for fdatasyncs.
    fn choose(&mut self, mode: SpoolSync) -> Option<&FsSync> {
        let wanted = match mode {
            SpoolSync::File => false,
            SpoolSync::Filesystem => true,
            SpoolSync::Auto => self.little_unwritten(),
        };
        if !wanted {
            return None;
        }
        if let Some(why) = self.unavailable.take() {
            log::warn!("spool_sync = {mode}: {why}; using one fdatasync per file");
        }
        self.fs_sync.as_ref()
    }

    fn little_unwritten(&mut self) -> bool {
        let now = Instant::now();
        match self.last_look {
            Some((at, little)) if now.duration_since(at) < AUTO_RECHECK => little,
            _ => {
                let little = match unwritten_kib() {
                    Ok(kib) => kib <= AUTO_UNWRITTEN_LIMIT_KIB,
                    Err(e) => {
                        if !self.meminfo_warned {
                            self.meminfo_warned = true;
                            log::warn!("spool_sync = auto: {e}; using one fdatasync per file");
                        }
                        false
                    }
                };
                self.last_look = Some((now, little));
                little
            }
        }
    }
}

/// `Dirty` + `Writeback` from /proc/meminfo, in KiB, or why they cannot be read.
fn unwritten_kib() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| format!("cannot read /proc/meminfo: {e}"))?;
    parse_unwritten_kib(&text).ok_or_else(|| "no Dirty and Writeback in /proc/meminfo".to_owned())
}

fn parse_unwritten_kib(meminfo: &str) -> Option<u64> {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    Some(field("Dirty")? + field("Writeback")?)
}

/// fdatasyncs that many spool files at once at most. The device takes concurrent syncs
/// together, so twenty sessions finishing DATA at once cost about three parallel rounds
/// instead of twenty syncs in a row; the threads are started once, not per file or batch.
const SYNC_THREADS: usize = 8;

/// Stack size of a sync thread: it only flushes a buffer and calls fdatasync.
const SYNC_STACK: usize = 128 << 10;

/// A job for a sync thread: a pending message and its place in the batch.
type SyncJob = (usize, Pending);

/// Persistent threads that fdatasync spool files in parallel.
struct SyncPool {
    jobs: Option<Sender<SyncJob>>,
    results: Receiver<(usize, io::Result<Pending>)>,
    threads: Vec<JoinHandle<()>>,
}

impl SyncPool {
    /// Starts up to `n` threads; with none (the system refused them all), files are synced
    /// one after another by the caller, which is slower but just as safe.
    fn start(n: usize) -> SyncPool {
        let (jobs_tx, jobs_rx) = mpsc::channel::<SyncJob>();
        let (results_tx, results_rx) = mpsc::channel();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let mut threads = Vec::with_capacity(n);
        for _ in 0..n {
            let (jobs, results) = (jobs_rx.clone(), results_tx.clone());
            match thread::Builder::new()
                .name("spool-fsync".to_owned())
                .stack_size(SYNC_STACK)
                .spawn(move || sync_thread(&jobs, &results))
            {
                Ok(h) => threads.push(h),
                Err(e) => {
                    log::warn!(
                        "cannot start an fdatasync thread ({e}); syncing with {} threads",
                        threads.len()
                    );
                    break;
                }
            }
        }
        SyncPool {
            jobs: (!threads.is_empty()).then_some(jobs_tx),
            results: results_rx,
            threads,
        }
    }

    /// fdatasyncs every pending message, in parallel when there are several; the results
    /// come back in the input order, with the connection each belongs to. A message whose
    /// sync failed is dropped, which removes its temporary file.
    fn sync_all(&self, pending: Vec<Pending>) -> Vec<(usize, io::Result<Pending>)> {
        let conns: Vec<usize> = pending.iter().map(|p| p.conn).collect();
        let mut out: Vec<Option<io::Result<Pending>>> = pending.iter().map(|_| None).collect();
        // One file is synced here: handing it over would only add a thread switch.
        let jobs = self.jobs.as_ref().filter(|_| pending.len() > 1);
        let mut sent = 0;
        for (i, p) in pending.into_iter().enumerate() {
            match jobs {
                Some(tx) => match tx.send((i, p)) {
                    Ok(()) => sent += 1,
                    Err(mpsc::SendError((i, p))) => out[i] = Some(sync_one(p)),
                },
                None => out[i] = Some(sync_one(p)),
            }
        }
        for _ in 0..sent {
            match self.results.recv() {
                Ok((i, r)) => out[i] = Some(r),
                Err(_) => break,
            }
        }
        conns
            .into_iter()
            .zip(out)
            .map(|(conn, r)| {
                // Only if every sync thread died with the message (it cannot panic, but the
                // answer must still be a failure, never a 250).
                (
                    conn,
                    r.unwrap_or_else(|| Err(io::Error::other("fdatasync thread stopped"))),
                )
            })
            .collect()
    }
}

impl Drop for SyncPool {
    fn drop(&mut self) {
        // Closing the job channel ends every thread once it is idle.
        self.jobs = None;
        for h in self.threads.drain(..) {
            if h.join().is_err() {
                log::error!("an fdatasync thread panicked");
            }
        }
    }
}

/// A sync thread: takes jobs until the pool closes its channel.
fn sync_thread(jobs: &Mutex<Receiver<SyncJob>>, results: &Sender<(usize, io::Result<Pending>)>) {
    loop {
        // A poisoned lock would mean a thread panicked holding it: nothing to take any more.
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((i, p)) = job else { return };
        if results.send((i, sync_one(p))).is_err() {
            return;
        }
    }
}

fn sync_one(mut p: Pending) -> io::Result<Pending> {
    p.writer.sync_data().map(|()| p)
}

/// Makes every file's data durable with one `syncfs`; the results come back as
/// [`SyncPool::sync_all`] gives them. When the sync fails, every message fails (dropping it
/// removes its temporary file).
fn sync_whole_fs(fs: &FsSync, mut pending: Vec<Pending>) -> Vec<(usize, io::Result<Pending>)> {
    let mut writers: Vec<&mut SpoolWriter> = pending.iter_mut().map(|p| &mut p.writer).collect();
    match fs.sync_data(&mut writers) {
        Ok(()) => pending.into_iter().map(|p| (p.conn, Ok(p))).collect(),
        Err(e) => pending
            .into_iter()
            .map(|p| (p.conn, Err(io::Error::new(e.kind(), e.to_string()))))
            .collect(),
    }
}

/// Makes a batch's commits durable up to the directory fsync: syncs the files' data (one
/// `syncfs` when `fs_sync` is given, else fdatasyncs in parallel), then renames them into
/// `queue/` in arrival order, so queue IDs keep that order. A failed message leaves nothing
/// behind (its temporary file is removed).
fn commit_all(
    pool: &SyncPool,
    fs_sync: Option<&FsSync>,
    commits: Vec<Commit>,
) -> Vec<(usize, Result<Committed, String>)> {
    // Each commit in order: the connection of a message to sync, or an answer known already.
    let mut order = Vec::with_capacity(commits.len());
    let mut to_sync = Vec::new();
    for c in commits {
        match c {
            Commit::Pending(p) => {
                order.push(Ok(p.conn));
                to_sync.push(p);
            }
            Commit::Failed { conn, reason } => order.push(Err((conn, reason))),
        }
    }
    let synced = match fs_sync {
        Some(fs) if !to_sync.is_empty() => sync_whole_fs(fs, to_sync),
        _ => pool.sync_all(to_sync),
    };
    let mut synced = synced.into_iter();
    let mut out = Vec::with_capacity(order.len());
    for next in order {
        let conn = match next {
            Ok(conn) => conn,
            Err((conn, reason)) => {
                out.push((conn, Err(reason)));
                continue;
            }
        };
        // sync_all answers once per message, in order; a missing answer is still a failure.
        let sync = match synced.next() {
            Some((synced_conn, sync)) if synced_conn == conn => sync,
            _ => Err(io::Error::other("no fdatasync result")),
        };
        let p = match sync {
            Ok(p) => p,
            Err(e) => {
                log::error!("conn={conn} cannot sync spool file: {e}");
                out.push((conn, Err(e.to_string())));
                continue;
            }
        };
        let size = p.writer.size();
        match p.writer.commit_file() {
            Ok(id) => out.push((
                conn,
                Ok(Committed {
                    id,
                    sender: p.sender,
                    nrcpt: p.nrcpt,
                    size,
                }),
            )),
            Err(e) => {
                log::error!("conn={} cannot commit spool file: {e}", p.log_id);
                out.push((conn, Err(e.to_string())));
            }
        }
    }
    out
}

/// Makes the renamed messages durable with one directory fsync and reports everything, each
/// connection's results in the order it asked. Returns false when the loop is gone.
fn finish(
    spool: &Spool,
    mut outcomes: Vec<(usize, Result<Committed, String>)>,
    done: &Sender<Done>,
    stats: &Stats,
) -> bool {
    let renamed = outcomes.iter().filter(|(_, r)| r.is_ok()).count();
    if renamed > 0 {
        // Only queue/: the daemon never writes to maildrop/, so syncing it too would only
        // cost another device flush per batch.
        let synced = spool.sync_queue_dir();
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        match synced {
            Ok(()) => {
                stats.commits.fetch_add(renamed as u64, Ordering::Relaxed);
                // Mail now waits in queue/, before any client hears 250: a `sendmail` run
                // from here on queues behind it instead of reaching the bridge first. (One
                // lstat while the marker is there; the delivery thread clears it once the
                // queue is empty.)
                if let Err(e) = spool.set_backlog(true) {
                    log::warn!("cannot mark the backlog: {e}");
                }
            }
            Err(e) => {
                // The files are in queue/ and will probably be delivered, but we cannot say
                // they are safe: the client gets 452 and may send again. A duplicate is
                // better than a lost message.
                log::error!("cannot sync the spool directory: {e}");
                for (_, result) in outcomes.iter_mut() {
                    if let Ok(c) = result {
                        log::warn!(
                            "{}: not confirmed to the client (directory sync failed)",
                            c.id
                        );
                        *result = Err(e.to_string());
                    }
                }
            }
        }
    }
    outcomes
        .into_iter()
        .all(|(conn, result)| done.send(Done::Committed { conn, result }).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Origin;
    use std::time::{Instant, SystemTime};

    struct TempSpool(std::path::PathBuf);

    impl Drop for TempSpool {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A fresh spool under the temporary directory, removed when the guard drops.
    fn temp_spool(label: &str) -> (TempSpool, Spool) {
        let root = std::env::temp_dir().join(format!("smtp_bridge-{label}-{}", std::process::id()));
        let spool = Spool::new(&root);
        spool.prepare(None).unwrap();
        (TempSpool(root), spool)
    }

    /// Whether the worker can make batches durable with `syncfs` on this kernel and the file
    /// system holding `spool`.
    fn syncfs_usable(spool: &Spool) -> bool {
        syncfs_reports_errors() && spool.fs_sync().unwrap().known_file_system().is_ok()
    }

    /// A worker on `spool` and the poll its waker wakes, as the event loop has them.
    fn start(spool: &Spool, mode: SpoolSync) -> (mio::Poll, SpoolWorker) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let worker =
            SpoolWorker::spawn(spool.clone(), mode, waker, Arc::new(Spares::new(0))).unwrap();
        (poll, worker)
    }

    fn envelope(sender: &str, nrcpt: usize) -> Box<Envelope> {
        Box::new(Envelope {
            sender: sender.to_owned(),
            recipients: (0..nrcpt).map(|i| format!("r{i}@example.org")).collect(),
            origin: Origin::Smtp {
                peer: "127.0.0.1:2525".parse().unwrap(),
                helo: "client.test".to_owned(),
            },
            arrival: SystemTime::now(),
        })
    }

    /// Collects results until `n` commits are answered, waiting on the waker's poll as the
    /// event loop would (write acknowledgements come earlier, on their own).
    fn collect(poll: &mut mio::Poll, worker: &SpoolWorker, n: usize) -> Vec<Done> {
        let mut events = mio::Events::with_capacity(8);
        let mut out = Vec::new();
        let mut commits = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while commits < n {
            assert!(Instant::now() < deadline, "only {commits} of {n} commits");
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            while let Some(d) = worker.try_recv() {
                commits += usize::from(matches!(d, Done::Committed { .. }));
                out.push(d);
            }
        }
        out
    }

    #[test]
    fn commits_in_order_acknowledges_writes_and_reports_failures() {
        let (_cleanup, spool) = temp_spool("worker");
        let (mut poll, worker) = start(&spool, SpoolSync::File);

        // Three connections interleave their messages; one aborts, one commits nothing.
        for conn in 1..=3 {
            worker
                .send(Job::Open {
                    conn,
                    log_id: conn as u64,
                    envelope: envelope(&format!("s{conn}@example.org"), conn),
                })
                .unwrap();
        }
        for conn in 1..=3 {
            let data = format!("Subject: {conn}\r\n\r\nbody {conn}\r\n").into_bytes();
            worker.send(Job::Write { conn, data }).unwrap();
        }
        worker.send(Job::Abort { conn: 2 }).unwrap();
        worker.send(Job::Commit { conn: 3 }).unwrap();
        worker.send(Job::Commit { conn: 1 }).unwrap();
        worker.send(Job::Commit { conn: 9 }).unwrap();

        let results = collect(&mut poll, &worker, 3);
        let mut acked = HashMap::new();
        let mut committed = Vec::new();
        let mut failed = Vec::new();
        for r in results {
            match r {
                Done::Written { conn, bytes } => *acked.entry(conn).or_insert(0) += bytes,
                Done::Committed {
                    conn,
                    result: Ok(c),
                } => committed.push((conn, c)),
                Done::Committed {
                    conn,
                    result: Err(e),
                } => failed.push((conn, e)),
            }
        }
        assert_eq!(acked.len(), 3, "{acked:?}");
        assert_eq!(committed.len(), 2);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 9);
        // Queue IDs follow commit order, and the log fields are right.
        let (c3, c1) = (&committed[0], &committed[1]);
        assert_eq!((c3.0, c1.0), (3, 1));
        assert!(c3.1.id < c1.1.id);
        assert_eq!(c3.1.sender, "s3@example.org");
        assert_eq!(c3.1.nrcpt, 3);
        assert_eq!(c3.1.size, "Subject: 3\r\n\r\nbody 3\r\n".len() as u64);
        // Both are in the queue, the aborted one is not.
        let listed: Vec<QueueId> = spool.list().unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(listed, vec![c3.1.id.clone(), c1.1.id.clone()]);
        worker.shutdown(Duration::from_secs(10));
    }

    #[test]
    fn commits_that_are_ready_together_share_one_directory_sync() {
        for mode in [SpoolSync::File, SpoolSync::Filesystem] {
            group_commit(mode);
        }
    }

    /// Five messages ready together become durable as one batch: one directory fsync, and
    /// with `filesystem` one `syncfs` for all their data (where the kernel allows it).
    fn group_commit(mode: SpoolSync) {
        let (_cleanup, spool) = temp_spool(&format!("group-{mode}"));
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        // Five sessions finish DATA at once: all their jobs are queued before the worker
        // looks, so they form one batch (run here on this thread, deterministically).
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        for conn in 0..5 {
            jobs_tx
                .send(Job::Open {
                    conn,
                    log_id: conn as u64,
                    envelope: envelope("a@example.org", 1),
                })
                .unwrap();
            jobs_tx
                .send(Job::Write {
                    conn,
                    data: b"Subject: x\r\n\r\ny\r\n".to_vec(),
                })
                .unwrap();
            jobs_tx.send(Job::Commit { conn }).unwrap();
        }
        drop(jobs_tx);
        let shared = Shared {
            stats: Arc::new(Stats::default()),
            sync_mode: Arc::new(SyncMode::new(mode)),
            spares: Arc::new(Spares::new(0)),
        };
        run(spool.clone(), jobs_rx, done_tx, waker, &shared);
        let ok = done_rx
            .iter()
            .filter(|d| matches!(d, Done::Committed { result: Ok(_), .. }))
            .count();
        let stats = &shared.stats;
        assert_eq!(ok, 5, "{mode}");
        assert_eq!(stats.commits.load(Ordering::Relaxed), 5, "{mode}");
        assert_eq!(stats.syncs.load(Ordering::Relaxed), 1, "{mode}");
        let want_fs_syncs = u64::from(mode == SpoolSync::Filesystem && syncfs_usable(&spool));
        assert_eq!(
            stats.fs_syncs.load(Ordering::Relaxed),
            want_fs_syncs,
            "{mode}"
        );
        let listed = spool.list().unwrap();
        assert_eq!(listed.len(), 5, "{mode}");
        for entry in listed {
            let (_, raw) = spool.read(&entry.id, 1 << 20).unwrap();
            assert_eq!(raw, b"Subject: x\r\n\r\ny\r\n", "{mode}");
        }
    }

    #[test]
    fn a_reload_changes_how_later_batches_are_synced() {
        let (_cleanup, spool) = temp_spool("mode");
        let (mut poll, worker) = start(&spool, SpoolSync::File);
        let one = |conn: usize| {
            worker
                .send(Job::Open {
                    conn,
                    log_id: conn as u64,
                    envelope: envelope("a@example.org", 1),
                })
                .unwrap();
            let data = b"Subject: x\r\n\r\ny\r\n".to_vec();
            worker.send(Job::Write { conn, data }).unwrap();
            worker.send(Job::Commit { conn }).unwrap();
        };
        one(1);
        collect(&mut poll, &worker, 1);
        assert_eq!(worker.stats().fs_syncs.load(Ordering::Relaxed), 0);
        worker.set_sync(SpoolSync::Filesystem);
        one(2);
        collect(&mut poll, &worker, 1);
        let want = u64::from(syncfs_usable(&spool));
        assert_eq!(worker.stats().fs_syncs.load(Ordering::Relaxed), want);
        assert_eq!(spool.list().unwrap().len(), 2);
        worker.shutdown(Duration::from_secs(10));
    }

    #[test]
    fn unwritten_data_from_meminfo() {
        let meminfo = "MemTotal:       24634140 kB\nDirty:              1024 kB\n\
                       Writeback:           16 kB\nWritebackTmp:        99 kB\n";
        assert_eq!(parse_unwritten_kib(meminfo), Some(1040));
        assert_eq!(parse_unwritten_kib("Dirty: 5 kB\n"), None);
        assert_eq!(parse_unwritten_kib("Dirty: x kB\nWriteback: 1 kB\n"), None);
        assert_eq!(parse_unwritten_kib(""), None);
        // This system's own figures parse.
        assert!(unwritten_kib().is_ok());
    }

    #[test]
    fn auto_takes_syncfs_only_when_little_is_unwritten() {
        let (_cleanup, spool) = temp_spool("auto");
        let mut whole = WholeFs::new(&spool);
        let usable = whole.fs_sync.is_some();
        assert_eq!(usable, syncfs_usable(&spool));
        assert!(whole.choose(SpoolSync::File).is_none());
        assert_eq!(whole.choose(SpoolSync::Filesystem).is_some(), usable);
        whole.last_look = Some((Instant::now(), false));
        assert!(whole.choose(SpoolSync::Auto).is_none());
        whole.last_look = Some((Instant::now(), true));
        assert_eq!(whole.choose(SpoolSync::Auto).is_some(), usable);
        // An old look is taken again.
        whole.last_look = Some((Instant::now() - AUTO_RECHECK * 2, false));
        let little = unwritten_kib().is_ok_and(|k| k <= AUTO_UNWRITTEN_LIMIT_KIB);
        assert_eq!(whole.choose(SpoolSync::Auto).is_some(), usable && little);
    }

    #[test]
    fn parallel_syncs_commit_in_arrival_order() {
        arrival_order(false);
    }

    #[test]
    fn one_syncfs_commits_in_arrival_order() {
        arrival_order(true);
    }

    fn arrival_order(whole_fs: bool) {
        let (_cleanup, spool) = temp_spool(&format!("order-{whole_fs}"));
        let pool = SyncPool::start(3);
        // Ten commits, two of them already failed, more than the pool has threads.
        let mut commits = Vec::new();
        for conn in 0..10 {
            if conn % 4 == 3 {
                let reason = format!("r{conn}");
                commits.push(Commit::Failed { conn, reason });
                continue;
            }
            let mut writer = spool.create(&envelope("a@example.org", 1)).unwrap();
            writer
                .write_all(format!("Subject: {conn}\r\n\r\nbody\r\n").as_bytes())
                .unwrap();
            commits.push(Commit::Pending(Pending {
                conn,
                log_id: conn as u64,
                writer,
                sender: format!("s{conn}@example.org"),
                nrcpt: 1,
            }));
        }
        let fs_sync = spool.fs_sync().unwrap();
        let out = commit_all(&pool, whole_fs.then_some(&fs_sync), commits);
        let conns: Vec<usize> = out.iter().map(|(conn, _)| *conn).collect();
        assert_eq!(conns, (0..10).collect::<Vec<_>>());
        let mut ids = Vec::new();
        for (conn, result) in &out {
            match result {
                Ok(c) => {
                    assert_ne!(conn % 4, 3, "{conn}");
                    assert_eq!(c.sender, format!("s{conn}@example.org"));
                    ids.push(c.id.clone());
                }
                Err(reason) => assert_eq!(reason, &format!("r{conn}")),
            }
        }
        assert_eq!(ids.len(), 8);
        // Renamed in arrival order: queue IDs increase with it.
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        spool.sync_dir().unwrap();
        let listed: Vec<QueueId> = spool.list().unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(listed, ids);
    }
}
