//! The durable on-disk spool shared by the daemon and `sendmail`.
//!
//! INTERFACE SKELETON — owned by the spool helper.
//!
//! Layout under the spool directory (owned by the daemon's unprivileged user):
//!
//! | path | mode | what |
//! |---|---|---|
//! | `maildrop/` | 1733 | any local user's `sendmail` leaves a message here |
//! | `queue/` | 0700 | accepted messages waiting for delivery, one file each, named by queue ID |
//! | `failed/` | 0700 | messages that ran out of lifetime, with the reason |
//!
//! A spool file holds the envelope in front of the raw message. A message is safe only after
//! [`SpoolWriter::commit`] (file fsync, rename, directory fsync) returned.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::envelope::Envelope;

/// A queue ID: uppercase hex, assigned at commit, sorting in commit (arrival) order across
/// processes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(pub String);

impl QueueId {
    /// A fresh ID: later than every ID this or any other process handed out before (time in
    /// microseconds, then a per-process sequence and the process ID). Used at commit, and by
    /// `sendmail` for a message the bridge took directly.
    pub fn generate() -> QueueId {
        todo!()
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One message waiting in `queue/`.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    /// Its ID.
    pub id: QueueId,
    /// Its envelope.
    pub envelope: Envelope,
    /// The raw message's size in bytes.
    pub size: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When the next attempt is due (the arrival time when never tried).
    pub next_attempt: SystemTime,
    /// Why the last attempt failed, if one did.
    pub last_error: Option<String>,
}

/// A message being written. Dropping it without committing removes the temporary file.
#[derive(Debug)]
pub struct SpoolWriter {
    _private: (),
}

impl io::Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = buf;
        todo!()
    }
    fn flush(&mut self) -> io::Result<()> {
        todo!()
    }
}

impl SpoolWriter {
    /// Raw message bytes written so far.
    pub fn size(&self) -> u64 {
        todo!()
    }

    /// fsyncs the file and renames it to its final name under a fresh queue ID, but does not
    /// fsync the directory: call [`Spool::sync_dir`] once for a batch of these before telling
    /// anyone the messages are safe (group commit).
    pub fn commit_file(self) -> io::Result<QueueId> {
        todo!()
    }

    /// [`SpoolWriter::commit_file`] followed by the directory fsync: the message is safe.
    pub fn commit(self) -> io::Result<QueueId> {
        todo!()
    }
}

/// An exclusive right to run the queue (an flock on a lock file), so the daemon's delivery
/// thread and `sendmail -q` never deliver the same message twice. Released on drop.
#[derive(Debug)]
pub struct RunnerLock {
    _file: File,
}

/// What [`Spool::ingest_maildrop`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestReport {
    /// Messages moved into `queue/`.
    pub accepted: usize,
    /// Entries refused (links, FIFOs, devices, over the size limit, unparsable), each logged
    /// and moved aside or removed as the documentation says.
    pub refused: usize,
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
}

impl Spool {
    /// The spool at `root`; nothing is touched on disk.
    pub fn new(root: impl Into<PathBuf>) -> Spool {
        Spool { root: root.into() }
    }

    /// The spool directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directories with their modes when missing; with `owner` (uid, gid), as
    /// root, also gives them to that user. Idempotent.
    pub fn prepare(&self, owner: Option<(u32, u32)>) -> io::Result<()> {
        let _ = owner;
        todo!()
    }

    /// Starts a message in `queue/` (the daemon, or a process running as the spool owner).
    pub fn create(&self, envelope: &Envelope) -> io::Result<SpoolWriter> {
        let _ = envelope;
        todo!()
    }

    /// Starts a message in `maildrop/` (any local user, no privileges needed).
    pub fn create_maildrop(&self, envelope: &Envelope) -> io::Result<SpoolWriter> {
        let _ = envelope;
        todo!()
    }

    /// fsyncs `queue/` (and `maildrop/`), making every renamed file durable.
    pub fn sync_dir(&self) -> io::Result<()> {
        todo!()
    }

    /// Moves what local users left in `maildrop/` into `queue/`, in arrival order, treating
    /// every entry as untrusted: no links followed, regular files only, one link, at most
    /// `max_size` bytes.
    pub fn ingest_maildrop(&self, max_size: u64) -> io::Result<IngestReport> {
        let _ = max_size;
        todo!()
    }

    /// The messages in `queue/`, oldest first.
    pub fn list(&self) -> io::Result<Vec<QueueEntry>> {
        todo!()
    }

    /// One queued message: its entry and up to `limit` bytes of the raw message.
    pub fn read(&self, id: &QueueId, limit: usize) -> io::Result<(QueueEntry, Vec<u8>)> {
        let _ = (id, limit);
        todo!()
    }

    /// Removes a delivered message.
    pub fn remove(&self, id: &QueueId) -> io::Result<()> {
        let _ = id;
        todo!()
    }

    /// Records a failed attempt atomically: the attempt count, when to try next, and why.
    pub fn defer(&self, id: &QueueId, next_attempt: SystemTime, reason: &str) -> io::Result<()> {
        let _ = (id, next_attempt, reason);
        todo!()
    }

    /// Moves a message whose lifetime ran out to `failed/`, with the reason beside it.
    pub fn fail(&self, id: &QueueId, reason: &str) -> io::Result<()> {
        let _ = (id, reason);
        todo!()
    }

    /// Takes the queue-runner lock; `None` when another process holds it and `wait` is false.
    pub fn lock_runner(&self, wait: bool) -> io::Result<Option<RunnerLock>> {
        let _ = wait;
        todo!()
    }

    /// Marks (or clears) that delivery is backed up, so that `sendmail` spools new mail behind
    /// the waiting messages instead of overtaking them. Readable by every user.
    pub fn set_backlog(&self, backlog: bool) -> io::Result<()> {
        let _ = backlog;
        todo!()
    }

    /// Whether delivery is backed up (see [`Spool::set_backlog`]).
    pub fn has_backlog(&self) -> bool {
        todo!()
    }
}
