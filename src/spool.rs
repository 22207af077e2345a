//! The durable on-disk spool shared by the daemon and `sendmail`: it turns "a message was
//! accepted" into a file that survives a crash, and keeps those files in arrival order until
//! delivery removes them or their lifetime moves them to `failed/`.
//!
//! # Layout
//!
//! Under the spool directory (mode 0755, owned by the daemon's unprivileged user, so that every
//! local user can reach `maildrop/` and the backlog marker):
//!
//! | path | mode | what |
//! |---|---|---|
//! | `maildrop/` | 1733 | any local user's `sendmail` leaves a message here |
//! | `queue/` | 0700 | accepted messages waiting for delivery, one file each, named by queue ID |
//! | `failed/` | 0700 | messages that ran out of lifetime, with the reason |
//! | `queue.lock` | 0600 | flock'd by whoever runs the queue ([`Spool::lock_runner`]) |
//! | `maildrop.lock` | 0600 | flock'd while the maildrop is ingested |
//! | `backlog` | 0644 | present while delivery is backed up ([`Spool::set_backlog`]) |
//! | `public/showq` | 0666 | the daemon's socket answering `mailq` and `sendmail -q` for every user ([`crate::showq`]) |
//! | `maildrop/.waiting` | 0644 | left by `sendmail` after a drop-off, until it is taken in ([`Spool::mark_maildrop`]) |
//!
//! # Files
//!
//! A spool file is a small text header, a blank line, then the raw message bytes unchanged:
//!
//! ```text
//! smtp_bridge-spool 1
//! arrival 1795529786.123456
//! origin smtp 127.0.0.1:41234 client.example
//! sender alice@example.org
//! rcpt bob@example.org
//! rcpt carol%20x@example.org
//!
//! <raw message>
//! ```
//!
//! Every field value is escaped: bytes outside `!`..`~`, and `%` itself, are written `%XX`, so a
//! hostile address can never start a new header line or split a field, and the header stays
//! plain ASCII. Times are kept to the microsecond. The origin is `origin smtp PEER HELO` or
//! `origin local UID USER`. A local submission made with `sendmail -F NAME` also has a
//! `fullname NAME` line (optional, at most once, only with a local origin, cut to
//! [`MAX_FULL_NAME`](crate::envelope::MAX_FULL_NAME) bytes when read); files without one,
//! such as every file written before the line existed, read as having no full name. The line
//! is written only when there is a full name, so that other files stay readable by versions
//! that do not know it. The raw message's size is the file's length minus the header's. The
//! header is at most [`MAX_HEADER_BYTES`] long, each line at most [`MAX_HEADER_LINE`];
//! anything else (a wrong first line, an unknown key, a missing field, bad escapes, no blank
//! line) is a [`FormatError`].
//!
//! Retry state lives beside the message in `queue/ID.retry` (`attempts N`, `next SECS.MICROS`,
//! `error ESCAPED`), replaced atomically: written to a temporary file, fsync'd, renamed over
//! the old one, directory fsync'd. A message without one has never been tried and is due at
//! its arrival time. A sidecar without its message (a crash between the two unlinks of
//! [`Spool::remove`]) is ignored and cleaned up by [`Spool::prepare`].
//!
//! Temporary files are named `.tmp.PID.RANDOM`: a queue ID is uppercase hex only, so neither
//! [`Spool::list`] nor [`Spool::ingest_maildrop`] can mistake one for a message.
//! [`Spool::prepare`] (and, for `maildrop/`, every ingestion) removes those whose process is
//! gone or that are older than a day: a message being written was never acknowledged.
//!
//! # Durability
//!
//! A message is safe only after [`SpoolWriter::commit`] (file fsync, rename, directory fsync)
//! returned. A failed write, fsync or rename removes the temporary file, so a full disk or a
//! size limit never leaves a partial message behind. Delivery is at least once: a crash after
//! the bridge accepted a message but before its removal reached the disk delivers it again.
//!
//! # Spare files
//!
//! The daemon keeps the files of delivered messages for new ones ([`Spares`]), as PostgreSQL
//! recycles its WAL segments: instead of unlinking a delivered message of at most
//! [`SPARE_MAX_BYTES`], [`Spool::retire_unsynced`] renames it to `queue/.spare.RANDOM`, and
//! [`Spool::create_reusing`] writes the next message over it from the start and cuts it to
//! its new length before the sync. A small message then allocates no inode (nor blocks, when
//! it is no larger than the spare), and a delivered one frees none. That matters most on ext4
//! without a journal, where creating a file skips, one by one, every inode freed in the last
//! minutes (`recently_deleted` in the kernel), and where a mount with `discard` makes every
//! unlink wait for the device.
//!
//! Safety: a spare is written over only after the directory fsync that made its rename
//! durable; until then a crash could bring the delivered message back under its queue ID, and
//! it must not come back holding another message's bytes. A message written over a spare is
//! committed like any other (sync, rename to its queue ID, directory fsync), so a crash while
//! it is written leaves only a spare with meaningless content, never a message. Spares stay
//! when the daemon stops and the next start takes them up ([`Spool::keep_spares`]), after a
//! directory fsync, since the run that retired them may have died before its own. Only the
//! process holding `spares.lock` keeps spares, so two daemons on one spool never write over
//! the same file; the directory fsyncs that make retirements durable go through a descriptor
//! it holds from the start, so a write error on the directory reaches it even when another
//! fsync reported it first, and a failed one gives up every spare until restart. The pool's
//! budget bounds the disk they hold. Their names start with a dot, so no listing sees them as
//! messages.
//!
//! # The maildrop
//!
//! `maildrop/` is writable by everybody and listable by nobody but its owner (1733, sticky).
//! `sendmail` writes there with a random name, mode 0644, and renames the finished file to
//! `QUEUEID.RANDOM`; the daemon reads it as the spool owner. Its content is untrusted:
//! [`Spool::ingest_maildrop`] never follows a link, accepts only regular files with one link
//! within the size limit, replaces the claimed origin with the file owner's uid, and keeps the
//! arrival order through the queue ID in the name when that ID is within [`ID_WINDOW`] of the
//! file's ctime (its arrival time within [`ARRIVAL_WINDOW`] before it). Links, FIFOs, devices,
//! directories and hard links were never a message `sendmail` acknowledged: they are refused
//! and removed (only the directory entry: their targets are never opened). A regular file
//! that cannot be queued (too big, a header that does not parse, a mode we may not read) is
//! moved to `failed/` with a reason instead, so that no message is ever deleted; an error that
//! is not the file's fault (out of descriptors or memory, I/O) stops the pass and leaves the
//! file for the next one.
//!
//! # Ownership
//!
//! When a process running as root (`sendmail -q` from root's crontab, or the daemon before
//! it drops privileges) creates a file in the spool, the file is given to the owner of the
//! directory it is created in, so that the daemon can still read and remove it afterwards.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};

use crate::envelope::{cap_full_name, Envelope, Origin};

/// The name of the maildrop's mark ([`Spool::mark_maildrop`]); a dot name, which taking the
/// maildrop in never reads as a message.
pub const MAILDROP_MARK: &str = ".waiting";

/// How often the daemon looks for the maildrop's mark while idle.
pub const MAILDROP_MARK_POLL: Duration = Duration::from_secs(1);

/// The first line of every spool file: the format and its version.
pub const MAGIC: &str = "smtp_bridge-spool 1";
/// The longest envelope header a spool file may have (room for 1000 recipients of the longest
/// legal address, fully escaped). Also the slack [`Spool::ingest_maildrop`] allows on top of
/// the message size limit.
pub const MAX_HEADER_BYTES: u64 = 4 << 20;
/// The longest single header line, newline included.
pub const MAX_HEADER_LINE: usize = 64 << 10;
/// The longest `last_error` kept in the retry state, in bytes: it is for a log line and
/// `mailq`, not for a transcript.
const MAX_REASON: usize = 1000;
/// A temporary file older than this is a leftover even if its process seems alive (its pid
/// may have been reused).
const STALE_TEMP_AGE: Duration = Duration::from_secs(24 * 3600);
/// Prefix of every temporary file name.
const TEMP_PREFIX: &str = ".tmp.";
/// Suffix of the retry-state sidecar in `queue/`.
const RETRY_SUFFIX: &str = ".retry";
/// Suffix of the reason file beside a message in `failed/`.
const REASON_SUFFIX: &str = ".reason";
/// Buffer of a [`SpoolWriter`]: the only memory a message in flight costs.
const WRITE_BUFFER: usize = 64 << 10;
/// The largest delivered message file kept as a spare (header included): a spare holds its
/// disk space until it is reused, so only the common small messages are kept.
pub const SPARE_MAX_BYTES: u64 = 64 << 10;
/// The unit a spare is charged in: a file holds whole blocks.
const SPARE_BLOCK: u64 = 4096;
/// Prefix of a spare file's name in `queue/`.
const SPARE_PREFIX: &str = ".spare.";
/// Held by the daemon that keeps spare files ([`Spool::keep_spares`]).
const SPARES_LOCK: &str = "spares.lock";
/// Length of a queue ID: 14 hex digits of microseconds, 4 of sequence, 8 of pid.
const ID_LEN: usize = 26;
/// How far a maildrop file's claimed queue ID may be from the moment it was renamed into
/// `maildrop/` (its ctime). `sendmail` generates the ID just before that rename, so a minute
/// is ample for an honest one; a claim outside it gets a fresh ID, which bounds how far a
/// local user can move a message ahead of waiting mail.
const ID_WINDOW: Duration = Duration::from_secs(60);
/// How long before its rename into `maildrop/` a message's claimed arrival time may lie
/// (`sendmail` reads its input in between); an earlier or later claim becomes the rename
/// time, so nobody can backdate a message to expire it at its first failed attempt.
const ARRIVAL_WINDOW: Duration = Duration::from_secs(600);

/// Why a spool file (or a maildrop entry claiming to be one) could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum FormatError {
    /// Occurs when the first line is not [`MAGIC`] (not a spool file, or a future version).
    BadMagic,
    /// Occurs when the file ends before the blank line that closes the header.
    Truncated,
    /// Occurs when a header line is longer than [`MAX_HEADER_LINE`] or the header longer than
    /// [`MAX_HEADER_BYTES`].
    TooLong,
    /// Occurs when a header line is malformed: unknown key, bad escape, bad number or
    /// address, or a field given twice.
    BadLine {
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        what: &'static str,
    },
    /// Occurs when a required field (`arrival`, `origin`, `sender`) is absent.
    Missing(&'static str),
    /// Occurs when the file cannot be read.
    Io(io::Error),
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::BadMagic => write!(f, "not a spool file (bad first line)"),
            FormatError::Truncated => write!(f, "header not terminated by a blank line"),
            FormatError::TooLong => write!(f, "header too long"),
            FormatError::BadLine { line, what } => write!(f, "header line {line}: {what}"),
            FormatError::Missing(field) => write!(f, "header has no {field} line"),
            FormatError::Io(_) => write!(f, "cannot read spool file"),
        }
    }
}

impl std::error::Error for FormatError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FormatError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<FormatError> for io::Error {
    fn from(e: FormatError) -> io::Error {
        match e {
            FormatError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// A queue ID: uppercase hex, assigned at commit, sorting in commit (arrival) order across
/// processes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(pub String);

impl QueueId {
    /// A fresh ID: later than every ID this or any other process handed out before (time in
    /// microseconds, then a per-process sequence and the process ID). Used at commit, and by
    /// `sendmail` for a message the bridge took directly.
    ///
    /// The form is 26 uppercase hex digits: 14 of microseconds since the epoch, 4 of a
    /// sequence that restarts every microsecond, 8 of the pid. Within a process IDs strictly
    /// increase even when the clock steps back; across processes they sort by time.
    pub fn generate() -> QueueId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0)
            & 0x00FF_FFFF_FFFF_FFFF;
        let mut last = LAST_ID
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (mut micros, mut seq) = *last;
        if now > micros {
            (micros, seq) = (now, 0);
        } else if seq >= 0xFFFF {
            // 65536 IDs within one microsecond (or a clock that went back): borrow the next
            // microsecond rather than break the order.
            (micros, seq) = (micros + 1, 0);
        } else {
            seq += 1;
        }
        *last = (micros, seq);
        QueueId(format!("{micros:014X}{seq:04X}{:08X}", std::process::id()))
    }

    /// Makes every ID this process generates from now on sort after `id`: the daemon starts
    /// after the newest message it finds queued, so that mail accepted after the wall clock
    /// stepped back (across a restart) is not delivered before mail that was waiting.
    pub fn continue_after(id: &QueueId) {
        if !id.is_valid() {
            return;
        }
        let (Ok(micros), Ok(seq)) = (
            u64::from_str_radix(&id.0[..14], 16),
            u32::from_str_radix(&id.0[14..18], 16),
        ) else {
            return;
        };
        let mut last = LAST_ID
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if (micros, seq) > *last {
            *last = (micros, seq);
        }
    }

    /// Whether this is a well-formed ID (26 uppercase hex digits). Every [`Spool`] method
    /// refuses any other, so an ID can never name a path outside the spool.
    pub fn is_valid(&self) -> bool {
        is_id(self.0.as_bytes())
    }

    /// When the ID was generated (its microsecond field), if it is well-formed.
    pub fn time(&self) -> Option<SystemTime> {
        if !self.is_valid() {
            return None;
        }
        let micros = u64::from_str_radix(&self.0[..14], 16).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_micros(micros))
    }
}

/// How many messages this process has put into each `queue/` directory (one, in the
/// daemon; tests hold several spools in one process).
static QUEUED: Mutex<Vec<(PathBuf, u64)>> = Mutex::new(Vec::new());

fn count_queued(dir: &Path) {
    let mut counts = QUEUED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match counts.iter_mut().find(|(d, _)| d == dir) {
        Some((_, n)) => *n += 1,
        None => counts.push((dir.to_path_buf(), 1)),
    }
}

/// The last queue ID this process generated: (microsecond, sequence within it).
static LAST_ID: Mutex<(u64, u32)> = Mutex::new((0, 0));

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_id(name: &[u8]) -> bool {
    name.len() == ID_LEN && name.iter().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
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

/// Files of delivered messages kept for new ones (see "Spare files" above), within a budget
/// of disk space, shared by the thread that delivers and the thread that writes. The files
/// stay when the daemon stops, for the next start to take up ([`Spool::keep_spares`]).
#[derive(Debug)]
pub struct Spares {
    ready: Mutex<Ready>,
    budget: u64,
}

#[derive(Debug, Default)]
struct Ready {
    /// Each file and what it is charged ([`spare_charge`]).
    files: Vec<(PathBuf, u64)>,
    /// The sum of their charges.
    bytes: u64,
    /// Set by [`Spares::close`]: nothing is kept or handed out any more.
    closed: bool,
}

/// What a spare file of `len` bytes costs the budget: the blocks it holds.
pub fn spare_charge(len: u64) -> u64 {
    len.max(1).div_ceil(SPARE_BLOCK) * SPARE_BLOCK
}

/// Unlinks spare files that are not kept.
fn remove_spares(files: impl IntoIterator<Item = PathBuf>) {
    for file in files {
        if let Err(e) = fs::remove_file(&file) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove spare file {}: {e}", file.display());
            }
        }
    }
}

impl Spares {
    /// An empty pool that keeps files worth at most `budget` bytes of disk.
    pub fn new(budget: u64) -> Spares {
        Spares {
            ready: Mutex::new(Ready::default()),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ready> {
        self.ready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes of budget not taken by files ready now (none once closed).
    pub fn room(&self) -> u64 {
        let ready = self.lock();
        if ready.closed {
            return 0;
        }
        self.budget.saturating_sub(ready.bytes)
    }

    /// Files ready for reuse now.
    pub fn len(&self) -> usize {
        self.lock().files.len()
    }

    /// Whether no file is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds files whose retirement is durable, each with its length; those beyond the
    /// budget (all of them once closed) are removed.
    pub fn give(&self, files: Vec<(PathBuf, u64)>) {
        let mut extra = Vec::new();
        {
            let mut ready = self.lock();
            for (file, len) in files {
                let charge = spare_charge(len);
                if !ready.closed && ready.bytes + charge <= self.budget {
                    ready.bytes += charge;
                    ready.files.push((file, charge));
                } else {
                    extra.push(file);
                }
            }
        }
        // Unlinked outside the lock: the writer must not wait behind a discard.
        remove_spares(extra);
    }

    /// Gives up every spare for the rest of the run (after a directory sync failed, when a
    /// retirement can no longer be known to be durable): those ready are removed, later
    /// ones are unlinked as they come.
    pub fn close(&self) {
        let files: Vec<PathBuf> = {
            let mut ready = self.lock();
            ready.closed = true;
            ready.bytes = 0;
            ready.files.drain(..).map(|(file, _)| file).collect()
        };
        remove_spares(files);
    }

    /// A file to write over and its charge, the most recently retired first (its blocks are
    /// likeliest still cached).
    fn take(&self) -> Option<(PathBuf, u64)> {
        let mut ready = self.lock();
        let (file, charge) = ready.files.pop()?;
        ready.bytes -= charge;
        Some((file, charge))
    }

    /// Returns a file [`Spares::take`] gave out, unused.
    fn put_back(&self, file: PathBuf, charge: u64) {
        let mut ready = self.lock();
        if ready.closed {
            drop(ready);
            remove_spares([file]);
        } else {
            ready.bytes += charge;
            ready.files.push((file, charge));
        }
    }
}

/// The right to keep spare files in a spool, held by one daemon at a time
/// ([`Spool::keep_spares`]): an exclusive lock on `spares.lock`, and a descriptor of
/// `queue/` kept open for the directory fsyncs that make retirements durable, so that a
/// write error on the directory is reported to it whoever else synced the directory first.
#[derive(Debug)]
pub struct SpareKeeper {
    dir: File,
    root: PathBuf,
    adopted: usize,
    _lock: Flock<File>,
}

impl SpareKeeper {
    /// fsyncs `queue/` through the descriptor held since the start.
    pub fn sync_queue_dir(&self) -> io::Result<()> {
        self.dir.sync_all()
    }

    /// The spool this keeper is for.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many spare files a previous run left that were taken up.
    pub fn adopted(&self) -> usize {
        self.adopted
    }
}

/// Where a [`SpoolWriter`] puts its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Area {
    /// `queue/`, final name `ID`.
    Queue,
    /// `maildrop/`, final name `ID.RANDOM`.
    Maildrop,
}

/// A message being written. Dropping it without committing removes the temporary file.
#[derive(Debug)]
pub struct SpoolWriter {
    /// The open temporary file; `None` only while committing.
    file: Option<BufWriter<File>>,
    /// The directory it lives in.
    dir: PathBuf,
    /// Its temporary path.
    temp: PathBuf,
    area: Area,
    /// Raw message bytes written so far.
    size: u64,
    /// The ID to commit under when still free (maildrop ingestion keeps the sender's ID).
    preferred_id: Option<QueueId>,
    /// Set once the temporary file no longer exists under its temporary name.
    done: bool,
    /// Set by [`SpoolWriter::sync_data`] (and cleared by any later write), so that the commit
    /// does not fdatasync the same data twice.
    synced: bool,
    /// Header bytes at the start of the file.
    header_len: u64,
    /// The file's length on disk beyond what was written: a reused spare still holds its
    /// earlier content there until [`SpoolWriter::settle`] cuts it off. 0 for a new file.
    stale_len: u64,
}

impl io::Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().ok_or_else(closed)?;
        self.synced = false;
        let n = file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().ok_or_else(closed)?.flush()
    }
}

fn closed() -> io::Error {
    io::Error::other("spool writer already committed")
}

impl SpoolWriter {
    /// Raw message bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// fsyncs the file and renames it to its final name under a fresh queue ID, but does not
    /// fsync the directory: call [`Spool::sync_dir`] once for a batch of these before telling
    /// anyone the messages are safe (group commit).
    pub fn commit_file(self) -> io::Result<QueueId> {
        self.finish(false)
    }

    /// [`SpoolWriter::commit_file`] followed by the directory fsync: the message is safe.
    pub fn commit(self) -> io::Result<QueueId> {
        self.finish(true)
    }

    /// Flushes and fdatasyncs the file now, without committing it: the spool worker syncs
    /// several writers in parallel this way, then commits (renames) them in order, cheaply.
    /// A commit after this does not sync again, unless something was written in between.
    pub fn sync_data(&mut self) -> io::Result<()> {
        self.settle()?;
        // fdatasync is enough: the file is new or a spare rewritten in place (its blocks were
        // allocated before), and its size is data for this purpose.
        self.file
            .as_ref()
            .ok_or_else(closed)?
            .get_ref()
            .sync_data()?;
        self.synced = true;
        Ok(())
    }

    /// Puts everything written into the file, and cuts a reused spare to that length: what
    /// every way of syncing does first.
    fn settle(&mut self) -> io::Result<()> {
        let file = self.file.as_mut().ok_or_else(closed)?;
        file.flush()?;
        let len = self.header_len + self.size;
        if self.stale_len > len {
            file.get_ref().set_len(len)?;
            self.stale_len = 0;
        }
        Ok(())
    }

    fn finish(mut self, sync_dir: bool) -> io::Result<QueueId> {
        if !self.synced {
            self.settle()?;
        }
        let buffered = self.file.take().ok_or_else(closed)?;
        let file = buffered.into_inner().map_err(|e| e.into_error())?;
        if !self.synced {
            // fdatasync is enough, as in `sync_data`.
            file.sync_data()?;
        }
        let mut preferred = self.preferred_id.take();
        // A collision is possible only with an ID a local user chose for a maildrop file, and
        // a fresh ID never collides twice; three tries bound the loop all the same.
        let mut last_err = None;
        for _ in 0..3 {
            let id = preferred.take().unwrap_or_else(QueueId::generate);
            let name = match self.area {
                Area::Queue => id.0.clone(),
                Area::Maildrop => format!("{id}.{}", random_hex()),
            };
            let target = self.dir.join(&name);
            match rename_noreplace(&self.temp, &target) {
                Ok(()) => {
                    self.done = true;
                    if self.area == Area::Queue {
                        count_queued(&self.dir);
                    }
                    if sync_dir {
                        if let Err(e) = fsync_dir_or_fs(&self.dir, &file) {
                            // Not durable, and the caller will say so: take the message back
                            // rather than deliver something reported as failed.
                            let _ = fs::remove_file(&target);
                            return Err(e);
                        }
                    }
                    return Ok(id);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no free queue ID")))
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if !self.done {
            // Close first, then unlink: nothing partial stays behind.
            drop(self.file.take());
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Makes the data of many spool files durable at once, with one `syncfs(2)` of the spool's
/// file system instead of one fdatasync per file: one journal commit and one cache flush for
/// a whole batch. The catch is that it also writes out other programs' unwritten data on the
/// same file system. Made by [`Spool::fs_sync`].
///
/// Write errors: `syncfs` reports them (through the file system's error sequence, sampled
/// when this descriptor was opened and advanced by each call) only on Linux 5.8 and later;
/// [`syncfs_reports_errors`] says whether this kernel does. Every call reports any error
/// since the previous call, so a batch whose data failed to reach the disk is never
/// reported durable.
#[derive(Debug)]
pub struct FsSync {
    dir: File,
}

impl FsSync {
    /// Whether `syncfs` is known to make data and metadata durable on the spool's file
    /// system: ext2/3/4, XFS, Btrfs and F2FS write and flush everything, tmpfs has nothing to
    /// write. Elsewhere it may do less than an fdatasync (FUSE without `syncfs` support
    /// returns success having done nothing), so it is not used there. `Err` names the type.
    pub fn known_file_system(&self) -> Result<(), String> {
        use nix::sys::statfs::{
            fstatfs, BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, F2FS_SUPER_MAGIC, TMPFS_MAGIC,
            XFS_SUPER_MAGIC,
        };
        let fs = fstatfs(&self.dir).map_err(|e| format!("cannot tell the file system: {e}"))?;
        let t = fs.filesystem_type();
        let known = [
            EXT4_SUPER_MAGIC,
            XFS_SUPER_MAGIC,
            BTRFS_SUPER_MAGIC,
            F2FS_SUPER_MAGIC,
            TMPFS_MAGIC,
        ];
        if known.contains(&t) {
            Ok(())
        } else {
            Err(format!(
                "syncfs is not known to make data durable on this file system (type {:#x})",
                t.0
            ))
        }
    }

    /// Flushes every writer's buffer, then one `syncfs`: afterwards their data is durable
    /// and a commit does not fdatasync them again. The writers must belong to the spool this
    /// handle came from (one file system).
    pub fn sync_data(&self, writers: &mut [&mut SpoolWriter]) -> io::Result<()> {
        for w in writers.iter_mut() {
            w.settle()?;
        }
        nix::unistd::syncfs(self.dir.as_fd()).map_err(io::Error::from)?;
        for w in writers.iter_mut() {
            w.synced = true;
        }
        Ok(())
    }
}

/// Whether `syncfs(2)` reports write errors on this kernel (Linux 5.8 and later; before,
/// it returned 0 even when data could not be written, which would make a lost message look
/// durable).
pub fn syncfs_reports_errors() -> bool {
    nix::sys::utsname::uname()
        .ok()
        .and_then(|u| kernel_at_least(&u.release().to_string_lossy(), (5, 8)))
        .unwrap_or(false)
}

/// Whether a kernel release such as `6.1.0-18-amd64` is at least `want`; `None` when it
/// does not parse.
fn kernel_at_least(release: &str, want: (u32, u32)) -> Option<bool> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse::<u32>().ok()?;
    let minor = parts.next()?.parse::<u32>().ok()?;
    Some((major, minor) >= want)
}

/// An exclusive right to run the queue (an flock on a lock file), so the daemon's delivery
/// thread and `sendmail -q` never deliver the same message twice. Released on drop.
#[derive(Debug)]
pub struct RunnerLock {
    _file: Flock<File>,
}

/// What [`Spool::requeue_failed`] did.
#[derive(Debug, Default)]
pub struct Requeued {
    /// The new queue IDs, in order.
    pub requeued: Vec<QueueId>,
    /// What was left in `failed/`, and why (names escaped for a terminal).
    pub skipped: Vec<(String, String)>,
}

/// What [`Spool::ingest_maildrop`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestReport {
    /// Messages moved into `queue/`.
    pub accepted: usize,
    /// Entries refused, each logged: links, FIFOs, devices and directories removed; regular
    /// files over the size limit, unparsable or unreadable moved to `failed/`.
    pub refused: usize,
}

/// What [`Spool::maildrop_left`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MaildropLeft {
    /// Entries (anything but dot files).
    pub entries: usize,
    /// Their sizes added up.
    pub bytes: u64,
    /// When the oldest dropped off after the moment the caller gave was.
    pub oldest_recent: Option<SystemTime>,
}

/// A queued message opened by [`Spool::open`].
#[derive(Debug)]
pub struct OpenMessage {
    /// Its entry (envelope, size, retry state).
    pub entry: QueueEntry,
    /// Positioned at the first byte of the raw message.
    reader: BufReader<File>,
}

impl OpenMessage {
    /// The entry and up to `limit` bytes of the raw message; the file is closed.
    pub fn read(self, limit: usize) -> io::Result<(QueueEntry, Vec<u8>)> {
        let want = usize::try_from(self.entry.size)
            .unwrap_or(usize::MAX)
            .min(limit);
        let mut bytes = Vec::with_capacity(want);
        self.reader.take(want as u64).read_to_end(&mut bytes)?;
        Ok((self.entry, bytes))
    }
}

/// The result of one look at `queue/`: what can be delivered, and what cannot even be read.
#[derive(Debug, Default)]
struct Scan {
    /// Readable messages, oldest first.
    entries: Vec<QueueEntry>,
    /// Messages whose header does not parse, with the reason.
    corrupt: Vec<(QueueId, String)>,
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

    fn queue_dir(&self) -> PathBuf {
        self.root.join("queue")
    }

    fn maildrop_dir(&self) -> PathBuf {
        self.root.join("maildrop")
    }

    fn failed_dir(&self) -> PathBuf {
        self.root.join("failed")
    }

    fn message_path(&self, id: &QueueId) -> io::Result<PathBuf> {
        check_id(id)?;
        Ok(self.queue_dir().join(&id.0))
    }

    fn retry_path(&self, id: &QueueId) -> PathBuf {
        self.queue_dir().join(format!("{id}{RETRY_SUFFIX}"))
    }

    fn backlog_path(&self) -> PathBuf {
        self.root.join("backlog")
    }

    fn maildrop_mark_path(&self) -> PathBuf {
        self.maildrop_dir().join(MAILDROP_MARK)
    }

    /// Creates the directories with their modes when missing; with `owner` (uid, gid), as
    /// root, also gives them to that user. Idempotent.
    ///
    /// Modes are set explicitly (the umask does not matter) and fixed when wrong. A spool
    /// directory that others can write to (`/tmp` by mistake) is refused rather than
    /// "fixed". Leftovers of a crash are removed: temporary files whose process is gone and
    /// retry sidecars without their message.
    pub fn prepare(&self, owner: Option<(u32, u32)>) -> io::Result<()> {
        let owner = if nix::unistd::geteuid().is_root() {
            owner
        } else {
            None
        };
        let created_root = !self.root.exists();
        match fs::DirBuilder::new().recursive(true).create(&self.root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if created_root {
            sync_created_dir(&self.root)?;
        }
        let meta = fs::metadata(&self.root)?;
        if meta.mode() & 0o002 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "spool directory {} is writable by everyone; use a dedicated directory",
                    self.root.display()
                ),
            ));
        }
        // Whose the queue was, before it is given to `owner`.
        let previous = fs::symlink_metadata(self.queue_dir()).ok().map(|m| m.uid());
        ensure_dir(&self.root, 0o755, owner)?;
        ensure_dir(&self.maildrop_dir(), 0o1733, owner)?;
        ensure_dir(&self.queue_dir(), 0o700, owner)?;
        ensure_dir(&self.failed_dir(), 0o700, owner)?;
        ensure_dir(&self.root.join("public"), 0o755, owner)?;
        if let (Some(owner), Some(previous)) = (owner, previous) {
            self.give_contents_to(owner, previous)?;
        }
        for dir in [self.queue_dir(), self.failed_dir(), self.maildrop_dir()] {
            remove_stale_temps(&dir)?;
        }
        // Sidecars whose message is gone.
        for name in read_names(&self.queue_dir())? {
            let bytes = name.as_bytes();
            if let Some(id) = bytes.strip_suffix(RETRY_SUFFIX.as_bytes()) {
                if is_id(id) && !self.queue_dir().join(OsStr::from_bytes(id)).exists() {
                    log::info!("removed retry state {} without its message", escape(bytes));
                    remove_if_exists(&self.queue_dir().join(&name))?;
                }
            }
        }
        Ok(())
    }

    /// Gives the daemon's files to `owner` (as root, before the drop) when the configured
    /// user changed: those of the previous owner (`previous`, whose `queue/` it was) in
    /// `queue/` and `failed/`, and its locks and marker beside them, so that the
    /// mail already queued is still the daemon's to deliver (Postfix's `postfix
    /// set-permissions`). Nothing else: files that local users left (in `maildrop/`, or set
    /// aside from it into `failed/`) keep their owner, which says who sent them; unknown
    /// names at the top are never touched. Each file is opened without following links or
    /// blocking and changed through that descriptor, and one with a second link is left.
    fn give_contents_to(&self, (uid, gid): (u32, u32), previous: u32) -> io::Result<()> {
        let mut given = 0usize;
        let mut give = |path: &Path| -> io::Result<()> {
            let file = match open_untrusted(path) {
                Ok(file) => file,
                // Gone, or a link: not ours to give.
                Err(_) => return Ok(()),
            };
            let meta = file.metadata()?;
            if !meta.is_file() || meta.uid() != previous || (meta.uid(), meta.gid()) == (uid, gid) {
                return Ok(());
            }
            if meta.nlink() != 1 {
                log::warn!("left {}: it has another link", path.display());
                return Ok(());
            }
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot give {} to uid {uid}: {e}", path.display()),
                )
            })?;
            given += 1;
            Ok(())
        };
        // (public/ holds only the showq socket, which the daemon binds anew as its user.)
        for dir in [self.queue_dir(), self.failed_dir()] {
            for name in read_names(&dir)? {
                give(&dir.join(name))?;
            }
        }
        for name in ["queue.lock", "maildrop.lock", SPARES_LOCK, "backlog"] {
            give(&self.root.join(name))?;
        }
        if given > 0 {
            log::warn!(
                "gave {given} spool file(s) in {} of uid {previous} to uid {uid} gid {gid}, the configured user",
                self.root.display()
            );
        }
        Ok(())
    }

    /// A warning when the spool is on ext2/3/4 without a journal (none in `/proc/fs/jbd2` for
    /// its device). There an fsync makes a file and its directory entry durable, but not
    /// the file system's own bookkeeping, and after a power cut `e2fsck` may move queued
    /// messages (intact) into `lost+found/` instead of leaving them in `queue/`: the
    /// power-loss test shows both (tests/power_loss.rs). `None` elsewhere, or when it
    /// cannot tell.
    pub fn journal_warning(&self) -> Option<String> {
        use nix::sys::statfs::{statfs, EXT4_SUPER_MAGIC};
        if statfs(&self.root).ok()?.filesystem_type() != EXT4_SUPER_MAGIC {
            return None;
        }
        let dev = fs::metadata(&self.root).ok()?.dev();
        let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
        let uevent = fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
        // ("cciss/c0d0" is "cciss!c0d0" in /proc.)
        let name = uevent
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))?
            .replace('/', "!");
        // Only where ext4 shows its mounts here can a missing journal entry be believed (a
        // sandbox may hide /proc/fs).
        if !Path::new("/proc/fs/ext4").join(&name).exists() {
            return None;
        }
        // jbd2 names an internal journal DEVICE-INODE ("vda1-8"), and an external one after
        // its own device (no "-INODE"): then it cannot tell whose it is, and says nothing.
        // The directory is missing altogether while no file system has a journal.
        let mut journaled = false;
        match fs::read_dir("/proc/fs/jbd2") {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let entry = entry.file_name();
                    let entry = entry.to_str()?;
                    match entry.rsplit_once('-') {
                        Some((dev, ino)) if ino.bytes().all(|b| b.is_ascii_digit()) => {
                            journaled |= dev == name;
                        }
                        _ => return None,
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => return None,
        }
        (!journaled).then(|| {
            format!(
                "the spool {} is on ext4 without a journal ({name}): after a power cut, e2fsck \
                 may move queued mail into lost+found/ (put the spool on a journaling file system)",
                self.root.display()
            )
        })
    }

    /// Starts a message in `queue/` (the daemon, or a process running as the spool owner).
    pub fn create(&self, envelope: &Envelope) -> io::Result<SpoolWriter> {
        SpoolWriter::start(&self.queue_dir(), Area::Queue, envelope, None)
    }

    /// [`Spool::create`] over a spare file when `spares` has one ready, so that no inode or
    /// block is allocated; a new file otherwise.
    pub fn create_reusing(&self, envelope: &Envelope, spares: &Spares) -> io::Result<SpoolWriter> {
        // First, so that a header that cannot be written costs no spare.
        let header = encode_header(envelope)?;
        let dir = self.queue_dir();
        while let Some((spare, charge)) = spares.take() {
            match SpoolWriter::start_over(&dir, &spare, &header) {
                Ok(Some(writer)) => return Ok(writer),
                // Not a spare any more: removed; try the next one.
                Ok(None) => {}
                Err(e) => {
                    // Not the spare's fault (out of descriptors or memory, I/O): keep it, and
                    // answer as a new file would have.
                    spares.put_back(spare, charge);
                    return Err(e);
                }
            }
        }
        SpoolWriter::start_with(&dir, Area::Queue, header, None)
    }

    /// Starts a message in `maildrop/` (any local user, no privileges needed).
    pub fn create_maildrop(&self, envelope: &Envelope) -> io::Result<SpoolWriter> {
        SpoolWriter::start(&self.maildrop_dir(), Area::Maildrop, envelope, None)
    }

    /// A handle that makes many files of this spool durable with one `syncfs(2)`
    /// ([`FsSync::sync_data`]). Its descriptor stays open, so that each sync reports every
    /// write error the file system saw since the previous one.
    pub fn fs_sync(&self) -> io::Result<FsSync> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).bits())
            .open(self.queue_dir())?;
        Ok(FsSync { dir })
    }

    /// fsyncs `queue/` (and `maildrop/`), making every renamed file durable.
    ///
    /// Directories that this process may not open for reading (`maildrop/` for anyone but
    /// the owner) are made durable with a `syncfs` of their file system instead.
    pub fn sync_dir(&self) -> io::Result<()> {
        fsync_dir(&self.queue_dir())?;
        match fsync_dir(&self.maildrop_dir()) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                let dir = File::open(&self.root)?;
                nix::unistd::syncfs(dir.as_fd()).map_err(io::Error::from)
            }
            other => other,
        }
    }

    /// Moves what local users left in `maildrop/` into `queue/`, in arrival order, treating
    /// every entry as untrusted: no links followed, regular files only, one link, at most
    /// `max_size` bytes.
    ///
    /// Each entry is first examined with `lstat`, so a symbolic link, FIFO, device or
    /// directory is refused without ever being opened; a regular file is then opened with
    /// `O_NOFOLLOW | O_NONBLOCK` and checked again with `fstat` (same inode, still regular,
    /// one link). Entries that are not such a file are logged as
    /// `refused maildrop entry NAME: reason` and unlinked (only the entry: a link's target is
    /// untouched); a regular file over `max_size` + [`MAX_HEADER_BYTES`], with a header that
    /// does not parse or that we may not open moves to `failed/` with a reason file instead.
    /// Any other open error (EMFILE, ENOMEM, EIO…) ends the pass with that error and deletes
    /// nothing. An accepted message keeps the queue ID in its name when that is a valid ID
    /// not in the future, within [`ID_WINDOW`] of the file's ctime and still free, so
    /// maildrop and SMTP mail interleave in commit order; its arrival time is the claimed one
    /// only within [`ARRIVAL_WINDOW`] before the ctime, else the ctime; its origin becomes
    /// the file owner's uid, whatever the header claimed.
    /// The maildrop entry is unlinked only after the copy in `queue/` is durable.
    pub fn ingest_maildrop(&self, max_size: u64) -> io::Result<IngestReport> {
        // Two ingestions at once (`mailq` beside a delivery pass) would copy the same entry
        // twice; a lock of its own (not the runner lock, which the caller may hold) keeps
        // them one after the other.
        let _ingesting = self.lock_file("maildrop.lock", true)?;
        let dir = self.maildrop_dir();
        // What the mark held back is held back by the backlog marker from here on (set
        // first, so that no moment is left with neither), until a delivery pass finds the
        // queue empty. The mark goes before the listing: whatever is dropped off after it,
        // its writer marks again.
        if self.maildrop_marked() {
            if let Err(e) = self.set_backlog(true) {
                log::warn!("cannot mark the backlog: {e}");
            }
        }
        self.remove_maildrop_mark();
        remove_stale_temps(&dir)?;
        let mut names: Vec<OsString> = read_names(&dir)?
            .into_iter()
            .filter(|n| !n.as_bytes().starts_with(b"."))
            .collect();
        names.sort();
        let mut report = IngestReport::default();
        let mut moved: Vec<PathBuf> = Vec::new();
        let mut failure = None;
        for name in names {
            match self.ingest_one(&dir, &name, max_size) {
                Ok(Ingested::Accepted(path)) => {
                    report.accepted += 1;
                    moved.push(path);
                }
                Ok(Ingested::Refused) => report.refused += 1,
                Ok(Ingested::Gone) => {}
                Err(e) => {
                    // Out of space or the like: this one stays for later, and the others are
                    // still tried, since a smaller one may fit (whoever names the big one
                    // `0-…` must not hold back everyone's mail behind it). The first error
                    // is the one reported.
                    log::debug!("maildrop entry {}: {e}", escape(name.as_bytes()));
                    failure.get_or_insert(e);
                }
            }
        }
        if !moved.is_empty() {
            fsync_dir(&self.queue_dir())?;
            for path in &moved {
                // Copied and durable: one entry its owner swapped for a directory meanwhile
                // must not leave the others behind to be taken in again.
                if let Err(e) = remove_if_exists(path) {
                    log::warn!(
                        "maildrop entry {} was taken in but cannot be removed: {e}",
                        escape(path.file_name().map_or(&[][..], |n| n.as_bytes()))
                    );
                }
            }
            fsync_dir(&dir)?;
            // What was taken in now waits in the queue: mail submitted from here on must
            // queue behind it, not overtake it (`mailq` takes the maildrop in too).
            if let Err(e) = self.set_backlog(true) {
                log::warn!("cannot mark the backlog: {e}");
            }
        }
        match failure {
            Some(e) => {
                // Messages are left behind: later mail queues behind them. (Not the mark,
                // which would bring the next attempt within a second, full disk or not.)
                if let Err(e) = self.set_backlog(true) {
                    log::warn!("cannot mark the backlog: {e}");
                }
                Err(e)
            }
            None => Ok(report),
        }
    }

    /// What `maildrop/` still holds after a failed [`Spool::ingest_maildrop`]: how many
    /// entries, their bytes, and when the oldest dropped off after `recent_after` was (its
    /// inode change time, which the rename into `maildrop/` set and its owner cannot move
    /// back; `sendmail` acknowledged it after that). Mail queued after that moment must
    /// wait for that message.
    pub fn maildrop_left(&self, recent_after: SystemTime) -> io::Result<MaildropLeft> {
        let dir = self.maildrop_dir();
        let mut left = MaildropLeft::default();
        let names = match read_names(&dir) {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(left),
            Err(e) => return Err(e),
        };
        for name in names {
            if name.as_bytes().starts_with(b".") {
                continue;
            }
            // Only what `sendmail` leaves, a regular file: a directory someone made here
            // (which ingestion cannot remove while it holds files) is nobody's message.
            let Ok(meta) = fs::symlink_metadata(dir.join(&name)) else {
                continue;
            };
            if !meta.file_type().is_file() {
                continue;
            }
            let changed = UNIX_EPOCH.checked_add(Duration::new(
                u64::try_from(meta.ctime()).unwrap_or(0),
                u32::try_from(meta.ctime_nsec()).unwrap_or(0),
            ));
            left.entries += 1;
            left.bytes += meta.len();
            if let Some(changed) = changed.filter(|c| *c > recent_after) {
                left.oldest_recent = Some(left.oldest_recent.map_or(changed, |o| o.min(changed)));
            }
        }
        Ok(left)
    }

    fn ingest_one(&self, dir: &Path, name: &OsStr, max_size: u64) -> io::Result<Ingested> {
        let path = dir.join(name);
        let shown = escape(name.as_bytes());
        let limit = max_size.saturating_add(MAX_HEADER_BYTES);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ingested::Gone),
            Err(e) => return Err(e),
        };
        if let Some(reason) = refusal(&meta) {
            return self.refuse(&path, &shown, &reason, meta.is_dir());
        }
        if meta.len() > limit {
            // A regular file with one link is what `sendmail` acknowledged with exit 0: a
            // lowered size limit must not delete it.
            return self.set_aside(&path, &shown, &too_big(meta.len(), limit));
        }
        let file = match open_untrusted(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ingested::Gone),
            // Something about this entry itself (a link swapped in after the lstat, a mode
            // we may not read): keep it in failed/ for a human.
            Err(e) if is_the_files_fault(&e) => {
                return self.set_aside(&path, &shown, &format!("cannot open: {e}"));
            }
            // A lease on it (fcntl F_SETLEASE: we open without blocking, so the open fails
            // instead of waiting out the lease-break time). `sendmail` never takes one, so
            // its owner holds it back on purpose: keep it in failed/ (a rename needs no
            // open) rather than stop every pass, and everyone's mail behind it, for good.
            Err(e) if e.raw_os_error() == Some(Errno::EAGAIN as i32) => {
                return self.set_aside(&path, &shown, &format!("cannot open: {e} (leased)"));
            }
            // Out of descriptors or memory, an I/O error: nothing wrong with the message, so
            // stop this pass and try again next time; never delete.
            Err(e) => {
                log::warn!("cannot open maildrop entry {shown}: {e}; retrying next pass");
                return Err(e);
            }
        };
        let fmeta = file.metadata()?;
        if fmeta.ino() != meta.ino() || fmeta.dev() != meta.dev() {
            // Renamed or replaced between lstat and open: look again next pass.
            log::warn!("maildrop entry {shown} was replaced while being opened; skipped");
            return Ok(Ingested::Gone);
        }
        if let Some(reason) = refusal(&fmeta) {
            return self.refuse(&path, &shown, &reason, false);
        }
        if fmeta.len() > limit {
            return self.set_aside(&path, &shown, &too_big(fmeta.len(), limit));
        }
        if has_holes(&file, fmeta.len()) {
            // `sendmail` writes every byte; holes are someone making the spool pay for
            // space their quota never did (copied in, they become real blocks).
            return self.set_aside(&path, &shown, "sparse file (holes)");
        }
        let mut reader = BufReader::new(file.take(limit.saturating_add(1)));
        let (mut envelope, header_len) = match parse_header(&mut reader) {
            Ok(parsed) => parsed,
            Err(FormatError::Io(e)) => return Err(e),
            Err(e) => return self.set_aside(&path, &shown, &e.to_string()),
        };
        // The header is the sender's word; the file's owner is the kernel's. The full name
        // (`-F`) stays the sender's word, as it was when given on the command line.
        let uid = fmeta.uid();
        envelope.origin = Origin::Local {
            uid,
            user: user_name(uid),
            full_name: envelope.origin.full_name().map(str::to_owned),
        };
        // So is the inode change time, which the rename into maildrop/ set and which, unlike
        // the mtime, its owner cannot choose: the claimed arrival time and queue ID are
        // honoured only near it, so nobody can backdate a message (expiring it at its first
        // failure) or jump ahead of waiting mail.
        let now = SystemTime::now();
        let changed = UNIX_EPOCH
            .checked_add(Duration::new(
                u64::try_from(fmeta.ctime()).unwrap_or(0),
                u32::try_from(fmeta.ctime_nsec()).unwrap_or(0),
            ))
            .unwrap_or(now)
            .min(now);
        if !near(envelope.arrival, changed, ARRIVAL_WINDOW) || envelope.arrival > changed {
            envelope.arrival = changed;
        }
        let preferred = name
            .as_bytes()
            .get(..ID_LEN)
            .filter(|p| is_id(p) && name.as_bytes().get(ID_LEN) == Some(&b'.'))
            .map(|p| QueueId(String::from_utf8_lossy(p).into_owned()))
            .filter(|id| {
                id.time()
                    .is_some_and(|t| t <= now && near(t, changed, ID_WINDOW))
            });
        // The envelope the sender wrote, with our arrival time and origin, may no longer fit a
        // spool header: the entry's fault, so it is set aside rather than retried for ever.
        let header = match encode_header(&envelope) {
            Ok(header) => header,
            Err(e) => return self.set_aside(&path, &shown, &e.to_string()),
        };
        // A copy that did not fit is not begun again until the file system says there is room
        // for it: each retry would fill it to its last block, for every other program too.
        // (Only after a real failure: what statvfs says is an estimate on some file systems,
        // and nothing at all on an unlimited tmpfs.)
        let key = (fmeta.dev(), fmeta.ino());
        let needed = fmeta
            .len()
            .saturating_sub(header_len)
            .saturating_add(header.len() as u64);
        if did_not_fit(key, None) && !has_room(&self.queue_dir(), needed) {
            return Err(io::Error::from_raw_os_error(Errno::ENOSPC as i32));
        }
        let copy = || -> io::Result<(SpoolWriter, u64)> {
            let mut writer =
                SpoolWriter::start_with(&self.queue_dir(), Area::Queue, header, preferred)?;
            let copied = io::copy(&mut reader.take(max_size.saturating_add(1)), &mut writer)?;
            Ok((writer, copied))
        };
        let (writer, copied) = match copy() {
            Ok(done) => done,
            Err(e) => {
                if matches!(
                    e.raw_os_error().map(Errno::from_raw),
                    Some(Errno::ENOSPC | Errno::EDQUOT)
                ) {
                    did_not_fit(key, Some(true));
                }
                return Err(e);
            }
        };
        did_not_fit(key, Some(false));
        if copied > max_size {
            drop(writer);
            return self.set_aside(
                &path,
                &shown,
                &format!("too big (more than {max_size} bytes)"),
            );
        }
        let size = writer.size();
        debug_assert_eq!(size, copied);
        let id = writer.commit_file()?;
        log::info!(
            "{id}: from=<{}>, size={size}, nrcpt={}, uid={uid} (from maildrop, header {header_len} bytes)",
            escape(envelope.sender.as_bytes()),
            envelope.recipients.len(),
        );
        Ok(Ingested::Accepted(path))
    }

    /// Removes an entry that was never a message `sendmail` acknowledged (a link, FIFO,
    /// device, directory or hard link).
    fn refuse(&self, path: &Path, shown: &str, reason: &str, dir: bool) -> io::Result<Ingested> {
        log::warn!("refused maildrop entry {shown}: {reason}");
        // unlink removes the entry itself, never what a link points to.
        let removed = if dir {
            fs::remove_dir(path)
        } else {
            fs::remove_file(path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot remove maildrop entry {shown}: {e}"),
        }
        Ok(Ingested::Refused)
    }

    /// Keeps a regular maildrop file that cannot be queued in `failed/`, with a reason.
    fn set_aside(&self, path: &Path, shown: &str, reason: &str) -> io::Result<Ingested> {
        self.move_aside(path, shown, reason)?;
        Ok(Ingested::Refused)
    }

    fn move_aside(&self, path: &Path, shown: &str, reason: &str) -> io::Result<()> {
        let failed = self.failed_dir();
        let text = format!(
            "reason: refused maildrop file {shown}: {}\nfailed: {}\n",
            escape_text(reason),
            crate::datetime::iso(SystemTime::now())
        );
        match place_failed(&failed, &QueueId::generate(), path, text.as_bytes()) {
            Ok(name) => {
                log::warn!("refused maildrop entry {shown}: {reason}; moved to failed/{name}");
                fsync_dir(&failed)
            }
            Err(e) => {
                // Keep the entry where it is (it is looked at again next time) rather than
                // lose it.
                log::error!(
                    "refused maildrop entry {shown}: {reason}; cannot move it to failed/: {e}"
                );
                Ok(())
            }
        }
    }

    /// The messages in `queue/`, oldest first.
    ///
    /// A file that cannot be parsed is left out and logged; the delivery pass moves such a
    /// file to `failed/`.
    pub fn list(&self) -> io::Result<Vec<QueueEntry>> {
        let scan = self.scan()?;
        for (id, reason) in &scan.corrupt {
            log::warn!("{id}: unreadable spool file: {reason}");
        }
        Ok(scan.entries)
    }

    /// The IDs of the messages in `queue/`, oldest first, without reading any of them.
    pub fn ids(&self) -> io::Result<Vec<QueueId>> {
        let mut ids: Vec<QueueId> = read_names(&self.queue_dir())?
            .into_iter()
            .filter(|n| is_id(n.as_bytes()))
            .map(|n| QueueId(n.to_string_lossy().into_owned()))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Reads every message header in `queue/`, oldest first, separating the unreadable ones.
    fn scan(&self) -> io::Result<Scan> {
        let mut scan = Scan::default();
        for id in self.ids()? {
            let opened = self.open_entry(&id);
            // `mailq` lists without the runner lock: the message may have been delivered
            // while it was read, and its file written over as a spare by the next message.
            // A queue ID is never used twice, so if the name still exists now, what was read
            // was this message's; if it is gone, the message was delivered (or failed), and
            // is not listed.
            let read = match &opened {
                Ok(_) => true,
                Err(e) => e.kind() == io::ErrorKind::InvalidData,
            };
            if read {
                match fs::symlink_metadata(self.message_path(&id)?) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    _ => {}
                }
            }
            match opened {
                Ok((entry, _)) => scan.entries.push(entry),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    scan.corrupt.push((id, e.to_string()))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(scan)
    }

    fn open_entry(&self, id: &QueueId) -> io::Result<(QueueEntry, BufReader<File>)> {
        let path = self.message_path(id)?;
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        let mut reader = BufReader::new(file);
        let (envelope, header_len) = parse_header(&mut reader)?;
        let retry = self.read_retry(id);
        let entry = QueueEntry {
            id: id.clone(),
            size: len.saturating_sub(header_len),
            attempts: retry.attempts,
            next_attempt: retry.next.unwrap_or(envelope.arrival),
            last_error: retry.error,
            envelope,
        };
        Ok((entry, reader))
    }

    /// One queued message: its entry and up to `limit` bytes of the raw message.
    pub fn read(&self, id: &QueueId, limit: usize) -> io::Result<(QueueEntry, Vec<u8>)> {
        self.open(id)?.read(limit)
    }

    /// One queued message, opened: its entry now, its content when asked
    /// ([`OpenMessage::read`]), from the same open file and header parse. Delivery looks at the entry first
    /// (is it due?) and reads the message only then, without opening and parsing it twice.
    pub fn open(&self, id: &QueueId) -> io::Result<OpenMessage> {
        let (entry, reader) = self.open_entry(id)?;
        Ok(OpenMessage { entry, reader })
    }

    /// Removes a delivered message.
    ///
    /// The message goes first, then its retry state, then the directory is fsync'd so that a
    /// crash cannot bring a delivered message back.
    pub fn remove(&self, id: &QueueId) -> io::Result<()> {
        self.remove_unsynced(id)?;
        self.sync_queue_dir()
    }

    /// Removes a delivered message (the message, then its retry state) without fsyncing
    /// `queue/`: a delivery pass removes a run of messages this way and then calls
    /// [`Spool::sync_queue_dir`] once, instead of paying a directory fsync per message.
    ///
    /// The unlink is visible at once, so nobody lists the message again; only a crash before
    /// the directory fsync can bring it back, delivered a second time (never lost), just as a
    /// crash between the PUT and the removal would.
    pub fn remove_unsynced(&self, id: &QueueId) -> io::Result<()> {
        fs::remove_file(self.message_path(id)?)?;
        remove_if_exists(&self.retry_path(id))
    }

    /// Removes a delivered message from the queue like [`Spool::remove_unsynced`], but keeps
    /// its file as a spare (`queue/.spare.RANDOM`) when it is at most [`SPARE_MAX_BYTES`]
    /// long and its [`spare_charge`] fits in `room`, and returns that name and the file's
    /// length (`None`: it was unlinked). Hand it to [`Spares::give`] only after
    /// [`Spool::sync_queue_dir`] made the rename durable.
    pub fn retire_unsynced(&self, id: &QueueId, room: u64) -> io::Result<Option<(PathBuf, u64)>> {
        let path = self.message_path(id)?;
        let len = fs::symlink_metadata(&path)?.len();
        if len > SPARE_MAX_BYTES || spare_charge(len) > room {
            self.remove_unsynced(id)?;
            return Ok(None);
        }
        let spare = self
            .queue_dir()
            .join(format!("{SPARE_PREFIX}{}", random_hex()));
        rename_noreplace(&path, &spare)?;
        remove_if_exists(&self.retry_path(id))?;
        Ok(Some((spare, len)))
    }

    /// Takes the right to keep spare files in this spool, unless another process holds it
    /// (`Ok(None)`: two daemons on one spool must never write over the same spare), and
    /// takes up the spare files a previous run left in `queue/` into `spares`. Their renames
    /// may not be durable yet (that run may have been killed before its directory fsync), so
    /// `queue/` is fsync'd before any is handed out. Those beyond the budget, over
    /// [`SPARE_MAX_BYTES`] or not a plain file with one link are removed (only the name: a
    /// link's target is untouched); a directory under such a name is left alone.
    pub fn keep_spares(&self, spares: &Spares) -> io::Result<Option<SpareKeeper>> {
        let Some(lock) = self.lock_file(SPARES_LOCK, false)? else {
            return Ok(None);
        };
        let queue = self.queue_dir();
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&queue)?;
        let mut found = Vec::new();
        for name in read_names(&queue)? {
            if !name.as_bytes().starts_with(SPARE_PREFIX.as_bytes()) {
                continue;
            }
            let path = queue.join(&name);
            match fs::symlink_metadata(&path) {
                Ok(meta)
                    if meta.file_type().is_file()
                        && meta.nlink() == 1
                        && meta.len() <= SPARE_MAX_BYTES =>
                {
                    found.push((path, meta.len()))
                }
                Ok(meta) if meta.is_dir() => log::warn!(
                    "{}: a directory under a spare file's name; left alone",
                    path.display()
                ),
                Ok(_) => remove_if_exists(&path)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if !found.is_empty() {
            dir.sync_all()?;
        }
        let before = spares.len();
        spares.give(found);
        Ok(Some(SpareKeeper {
            dir,
            root: self.root.clone(),
            adopted: spares.len() - before,
            _lock: lock,
        }))
    }

    /// fsyncs `queue/`, making earlier [`Spool::remove_unsynced`] calls durable.
    pub fn sync_queue_dir(&self) -> io::Result<()> {
        fsync_dir(&self.queue_dir())
    }

    /// Records a failed attempt atomically: the attempt count, when to try next, and why.
    pub fn defer(&self, id: &QueueId, next_attempt: SystemTime, reason: &str) -> io::Result<()> {
        // Refuse to create retry state for a message that is not there.
        fs::symlink_metadata(self.message_path(id)?)?;
        let previous = self.read_retry(id);
        let state = RetryState {
            attempts: previous.attempts.saturating_add(1),
            next: Some(next_attempt),
            error: Some(truncate(reason, MAX_REASON).to_owned()),
        };
        write_atomic(
            &self.queue_dir(),
            &format!("{id}{RETRY_SUFFIX}"),
            state.encode().as_bytes(),
            0o600,
        )
    }

    /// Moves a message whose lifetime ran out to `failed/`, with the reason beside it.
    ///
    /// The reason file (`failed/ID.reason`: reason, time, attempts, arrival, sender,
    /// recipients) is written and fsync'd before the message moves, so a message in
    /// `failed/` always has its reason. Nothing in `failed/` is ever replaced: when `ID` is
    /// taken there, the message becomes `failed/ID-N` (and `ID-N.reason`). `attempted`: the
    /// caller has just tried it once more than its retry state counts.
    pub fn fail(&self, id: &QueueId, reason: &str, attempted: bool) -> io::Result<()> {
        let path = self.message_path(id)?;
        let failed = self.failed_dir();
        let mut text = format!(
            "reason: {}\nfailed: {}\n",
            escape_text(truncate(reason, MAX_REASON)),
            crate::datetime::iso(SystemTime::now())
        );
        match self.open_entry(id) {
            Ok((entry, _)) => {
                text.push_str(&format!(
                    "attempts: {}\narrival: {}\nsender: <{}>\n",
                    entry.attempts + u32::from(attempted),
                    crate::datetime::iso(entry.envelope.arrival),
                    escape(entry.envelope.sender.as_bytes())
                ));
                for rcpt in &entry.envelope.recipients {
                    text.push_str(&format!("recipient: <{}>\n", escape(rcpt.as_bytes())));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
            Err(e) => text.push_str(&format!("header: {e}\n")),
        }
        // Never over an earlier failure of the same name: it gets a suffix instead.
        let name = place_failed(&failed, id, &path, text.as_bytes())?;
        if name != id.0 {
            log::warn!("{id}: failed/{id} already taken, moved to failed/{name}");
        }
        remove_if_exists(&self.retry_path(id))?;
        fsync_dir(&failed)?;
        fsync_dir(&self.queue_dir())
    }

    /// How many messages this process has put into this spool's `queue/` so far: a delivery
    /// pass that sees the number change after it listed the queue knows, without listing it
    /// again, that mail is still waiting.
    pub fn queued_by_this_process(&self) -> u64 {
        let dir = self.queue_dir();
        let counts = QUEUED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts
            .iter()
            .find(|(d, _)| *d == dir)
            .map_or(0, |(_, n)| *n)
    }

    /// The messages kept in `failed/` (names without their `.reason`).
    pub fn failed_names(&self) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = match read_names(&self.failed_dir()) {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        }
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .filter(|n| !n.starts_with('.') && !n.ends_with(REASON_SUFFIX))
        .collect();
        names.sort();
        Ok(names)
    }

    /// Moves messages kept in `failed/` back into the queue (`smtp_bridge --requeue`): the
    /// one called `which`, or all. Each keeps its queue ID (a fresh one when that is taken
    /// again), so it goes out in its place among the waiting mail, with a fresh retry state;
    /// its reason file goes. Only the spool owner's own queue files qualify: a maildrop file
    /// a local user left, set aside (too big, leased, sparse, a damaged envelope), carries
    /// that user's word for its origin and arrival and is never trusted into the queue;
    /// those are reported as skipped, with why.
    pub fn requeue_failed(&self, which: Option<&str>) -> io::Result<Requeued> {
        let failed = self.failed_dir();
        let owner = fs::metadata(self.queue_dir())?.uid();
        let names = self.failed_names()?;
        let names: Vec<String> = match which {
            None => names,
            Some(name) => names.into_iter().filter(|n| n == name).collect(),
        };
        if let (Some(name), true) = (which, names.is_empty()) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no message {name} in {}", failed.display()),
            ));
        }
        let mut report = Requeued::default();
        for name in names {
            let path = failed.join(&name);
            let shown = escape(name.as_bytes());
            let file = match open_untrusted(&path) {
                Ok(file) => file,
                Err(e) => {
                    report.skipped.push((shown, format!("cannot open: {e}")));
                    continue;
                }
            };
            let meta = file.metadata()?;
            if !meta.is_file() || meta.nlink() != 1 {
                report.skipped.push((
                    shown,
                    "not a queue file (a link or not a regular file)".into(),
                ));
                continue;
            }
            if meta.uid() != owner {
                report.skipped.push((
                    shown,
                    format!(
                        "a maildrop file of uid {} that was set aside; see its .reason",
                        meta.uid()
                    ),
                ));
                continue;
            }
            if let Err(e) = parse_header(&mut BufReader::new(&file)) {
                report
                    .skipped
                    .push((shown, format!("damaged envelope: {e}")));
                continue;
            }
            drop(file);
            // `ID` or `ID-N` (a second failure under the same ID).
            let base = name.get(..ID_LEN).filter(|b| is_id(b.as_bytes()));
            let mut id = base.map_or_else(QueueId::generate, |b| QueueId(b.to_owned()));
            while let Err(e) = rename_noreplace(&path, &self.queue_dir().join(&id.0)) {
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
                // Taken by a message waiting now: its retry state is its own.
                id = QueueId::generate();
            }
            // A fresh retry state: none left over under this name.
            remove_if_exists(&self.retry_path(&id))?;
            remove_if_exists(&failed.join(format!("{name}{REASON_SUFFIX}")))?;
            report.requeued.push(id);
        }
        if !report.requeued.is_empty() {
            fsync_dir(&self.queue_dir())?;
            fsync_dir(&failed)?;
            // The daemon looks for the mark every second.
            self.mark_maildrop()?;
        }
        report.requeued.sort();
        Ok(report)
    }

    /// Takes the queue-runner lock; `None` when another process holds it and `wait` is false.
    pub fn lock_runner(&self, wait: bool) -> io::Result<Option<RunnerLock>> {
        Ok(self
            .lock_file("queue.lock", wait)?
            .map(|lock| RunnerLock { _file: lock }))
    }

    /// An exclusive flock on `root/name` (created 0600 for the spool owner).
    fn lock_file(&self, name: &str, wait: bool) -> io::Result<Option<Flock<File>>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(self.root.join(name))?;
        adopt(&file, &self.root)?;
        let arg = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let mut file = file;
        loop {
            match Flock::lock(file, arg) {
                Ok(lock) => return Ok(Some(lock)),
                Err((_, Errno::EWOULDBLOCK)) if !wait => return Ok(None),
                Err((f, Errno::EINTR)) => file = f,
                Err((_, errno)) => return Err(errno.into()),
            }
        }
    }

    /// Marks (or clears) that delivery is backed up, so that `sendmail` spools new mail behind
    /// the waiting messages instead of overtaking them. Readable by every user.
    ///
    /// The marker is advisory and not fsync'd: after a crash it may be stale either way until
    /// the next delivery pass sets it right.
    pub fn set_backlog(&self, backlog: bool) -> io::Result<()> {
        let path = self.backlog_path();
        if !backlog {
            return remove_if_exists(&path);
        }
        if fs::symlink_metadata(&path).is_ok() {
            return Ok(());
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&path)?;
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        adopt(&file, &self.root)
    }

    /// Whether delivery is backed up (see [`Spool::set_backlog`]).
    pub fn has_backlog(&self) -> bool {
        fs::symlink_metadata(self.backlog_path()).is_ok()
    }

    /// Marks that a message waits in `maildrop/`, for any local user's `sendmail` after
    /// leaving one there (the backlog marker is the spool owner's to set): until the maildrop
    /// is taken in, later mail queues behind it instead of going to the bridge first, and
    /// the daemon, which looks for the mark every [`MAILDROP_MARK_POLL`], takes it in.
    ///
    /// Advisory, like the backlog marker: anyone may create it (the worst it does is make
    /// mail queue for a moment), it is never followed, and taking the maildrop in removes it.
    pub fn mark_maildrop(&self) -> io::Result<()> {
        let path = self.maildrop_mark_path();
        if fs::symlink_metadata(&path).is_ok() {
            return Ok(());
        }
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&path)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether a message waits in `maildrop/` (see [`Spool::mark_maildrop`]). Only a regular
    /// file counts: a directory or a link someone made there marks nothing.
    pub fn maildrop_marked(&self) -> bool {
        fs::symlink_metadata(self.maildrop_mark_path()).is_ok_and(|m| m.file_type().is_file())
    }

    /// Removes the mark, whatever it is (a local user may have made a directory of that
    /// name: removed when empty, left otherwise, and never counted as a mark).
    fn remove_maildrop_mark(&self) {
        let path = self.maildrop_mark_path();
        let removed = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir(&path),
            Ok(_) => fs::remove_file(&path),
            Err(_) => return,
        };
        if let Err(e) = removed {
            log::debug!("cannot remove the maildrop mark {MAILDROP_MARK}: {e}");
        }
    }

    /// Sets the backlog marker at the end of a delivery pass: set when messages still wait,
    /// cleared only when `queue/` is empty and the maildrop unmarked, checked under the
    /// maildrop's lock, so that a pass which listed the queue before an ingestion (by
    /// `mailq`) cannot clear the marker that ingestion set.
    pub fn settle_backlog(&self, waiting: bool) -> io::Result<()> {
        if waiting {
            return self.set_backlog(true);
        }
        if !self.has_backlog() {
            // Nothing to clear (nearly always): no lock, no listing. A marker set right
            // after this look stays, which is the safe way to be wrong.
            return Ok(());
        }
        let _ingesting = self.lock_file("maildrop.lock", true)?;
        // Removed first, then the queue listed: a message committed before the listing is
        // seen by it, and one committed after finds the marker gone and sets it itself
        // (the spool worker does, before its 250). Listing first would let a commit slip
        // in between, find the marker still there, and be left without one.
        self.set_backlog(false)?;
        let idle = self.ids()?.is_empty() && !self.maildrop_marked();
        if idle {
            Ok(())
        } else {
            self.set_backlog(true)
        }
    }

    /// Whether this process owns the spool, so that its messages go into `queue/` rather than
    /// `maildrop/`.
    pub fn is_owned_by_us(&self) -> bool {
        fs::metadata(&self.root).is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw())
    }

    fn read_retry(&self, id: &QueueId) -> RetryState {
        let path = self.retry_path(id);
        let mut text = String::new();
        let read = File::open(&path).and_then(|f| f.take(64 << 10).read_to_string(&mut text));
        match read {
            Ok(_) => RetryState::parse(&text).unwrap_or_else(|| {
                log::warn!("{id}: unreadable retry state, treating as never tried");
                RetryState::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => RetryState::default(),
            Err(e) => {
                log::warn!("{id}: cannot read retry state: {e}");
                RetryState::default()
            }
        }
    }
}

/// What became of one maildrop entry.
enum Ingested {
    /// Copied into `queue/` (not yet durable); the maildrop path to unlink once it is.
    Accepted(PathBuf),
    /// Refused, logged, removed or moved aside.
    Refused,
    /// Vanished before we got to it, or was replaced between `lstat` and `open` (looked at
    /// again in the next pass).
    Gone,
}

/// Maildrop entries (device, inode) whose copy into `queue/` ran out of space: asked with
/// `None`, whether `key` is one; with `Some(true)` or `Some(false)`, records or forgets it.
/// At most a few dozen are kept: forgetting one only costs one more attempt.
fn did_not_fit(key: (u64, u64), set: Option<bool>) -> bool {
    static KEYS: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
    let mut keys = KEYS.lock().unwrap_or_else(|p| p.into_inner());
    let known = keys.contains(&key);
    match set {
        Some(true) if !known => {
            if keys.len() >= 64 {
                keys.remove(0);
            }
            keys.push(key);
        }
        Some(false) if known => keys.retain(|k| *k != key),
        _ => {}
    }
    known
}

/// Whether the file system of `dir` says `bytes` fit. A file system that reports no size
/// at all (an unlimited tmpfs) or cannot be asked is taken at its word: yes.
fn has_room(dir: &Path, bytes: u64) -> bool {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(fs) if fs.blocks() > 0 => {
            fs.blocks_available().saturating_mul(fs.fragment_size()) >= bytes
        }
        _ => true,
    }
}

/// Opens a file someone else may have put there, for reading: never through a link, never
/// waiting (a FIFO, a lease), never as a controlling terminal. The caller checks what it got.
fn open_untrusted(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(
            (OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).bits(),
        )
        .open(path)
}

/// Whether the file has a hole before its end (`lseek(SEEK_HOLE)`; file systems that do
/// not track holes report none). `sendmail` writes every byte, so only a file made sparse
/// on purpose has one; the exception is ZFS with compression, which stores a whole record
/// of zero bytes (128 KiB) as a hole, something no text or MIME message holds. The offset
/// is put back.
fn has_holes(file: &File, len: u64) -> bool {
    use nix::unistd::{lseek, Whence};
    let hole = lseek(file, 0, Whence::SeekHole);
    let _ = lseek(file, 0, Whence::SeekSet);
    matches!(hole, Ok(at) if u64::try_from(at).is_ok_and(|at| at < len))
}

/// Why a maildrop entry is not a message at all (and may be removed), judged from its
/// (l)stat: anything but a regular file with exactly one link.
fn refusal(meta: &fs::Metadata) -> Option<String> {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        Some("symbolic link")
    } else if ft.is_dir() {
        Some("directory")
    } else if ft.is_fifo() {
        Some("FIFO")
    } else if ft.is_socket() {
        Some("socket")
    } else if ft.is_block_device() || ft.is_char_device() {
        Some("device")
    } else if !ft.is_file() {
        Some("not a regular file")
    } else {
        None
    };
    if let Some(kind) = kind {
        return Some(kind.to_owned());
    }
    if meta.nlink() != 1 {
        return Some(format!("hard link ({} links)", meta.nlink()));
    }
    None
}

/// Whether opening a maildrop entry failed because of the entry itself (a link swapped in
/// after the `lstat`, a mode we may not read), so that it belongs in `failed/`; any other
/// error (EMFILE, ENFILE, ENOMEM, EIO…) is the system's and must be retried, never acted on.
fn is_the_files_fault(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        // ENXIO: a socket renamed over the entry between the lstat and the open.
        Some(Errno::ELOOP | Errno::EACCES | Errno::EPERM | Errno::ENXIO)
    )
}

#[cfg(test)]
mod open_error_tests {
    use super::*;

    #[test]
    fn maildrop_open_errors_of_the_system_never_set_mail_aside() {
        for errno in [Errno::ELOOP, Errno::EACCES, Errno::EPERM, Errno::ENXIO] {
            assert!(is_the_files_fault(&io::Error::from(errno)), "{errno}");
        }
        for errno in [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOMEM,
            Errno::EIO,
            Errno::EINTR,
            Errno::ENOSPC,
        ] {
            assert!(!is_the_files_fault(&io::Error::from(errno)), "{errno}");
        }
        assert!(!is_the_files_fault(&io::Error::other("no errno")));
    }
}

fn too_big(len: u64, limit: u64) -> String {
    format!("too big ({len} bytes, limit {limit})")
}

/// Whether `a` and `b` are at most `window` apart.
fn near(a: SystemTime, b: SystemTime, window: Duration) -> bool {
    match a.duration_since(b) {
        Ok(d) => d <= window,
        Err(e) => e.duration() <= window,
    }
}

/// Writes `failed/NAME.reason` and then moves `from` to `failed/NAME`, never replacing
/// anything already there: `NAME` is `id`, or `id-N` when that is taken. Returns `NAME`.
fn place_failed(failed: &Path, id: &QueueId, from: &Path, reason: &[u8]) -> io::Result<String> {
    let mut last_err = None;
    for n in 0..100u32 {
        let name = if n == 0 {
            id.0.clone()
        } else {
            format!("{id}-{n}")
        };
        let reason_name = format!("{name}{REASON_SUFFIX}");
        let target = failed.join(&name);
        if fs::symlink_metadata(&target).is_ok()
            || fs::symlink_metadata(failed.join(&reason_name)).is_ok()
        {
            continue;
        }
        write_atomic(failed, &reason_name, reason, 0o600)?;
        match rename_noreplace(from, &target) {
            Ok(()) => return Ok(name),
            Err(e) => {
                // Leave no reason without its message.
                remove_if_exists(&failed.join(&reason_name))?;
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no free name in failed/")))
}

impl SpoolWriter {
    fn start(
        dir: &Path,
        area: Area,
        envelope: &Envelope,
        preferred_id: Option<QueueId>,
    ) -> io::Result<SpoolWriter> {
        SpoolWriter::start_with(dir, area, encode_header(envelope)?, preferred_id)
    }

    /// Starts a message with this header in a new temporary file.
    fn start_with(
        dir: &Path,
        area: Area,
        header: Vec<u8>,
        preferred_id: Option<QueueId>,
    ) -> io::Result<SpoolWriter> {
        let temp = dir.join(temp_name());
        let mode = match area {
            Area::Queue => 0o600,
            Area::Maildrop => 0o644,
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&temp)?;
        SpoolWriter::begin(file, dir, temp, area, &header, preferred_id, 0)
    }

    /// Starts a message in `queue/` over a spare file (see [`Spares`]). `Ok(None)` when the
    /// spare is not one any more (gone, replaced, not a plain file of ours with one link): it
    /// is then removed. An error that is not the file's fault is returned, the spare left.
    fn start_over(dir: &Path, spare: &Path, header: &[u8]) -> io::Result<Option<SpoolWriter>> {
        let unusable = |why: &dyn std::fmt::Display| {
            log::debug!("spare file {} not reused: {why}", spare.display());
            let _ = fs::remove_file(spare);
            Ok(None)
        };
        if spare.parent() != Some(dir) {
            return unusable(&"retired from another spool");
        }
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).bits())
            .open(spare);
        let file = match opened {
            Ok(file) => file,
            Err(e) => {
                return match e.raw_os_error() {
                    // Gone, a link, a FIFO or device, a directory, not ours.
                    Some(
                        nix::libc::ENOENT
                        | nix::libc::ELOOP
                        | nix::libc::ENXIO
                        | nix::libc::EISDIR
                        | nix::libc::EACCES
                        | nix::libc::EPERM
                        | nix::libc::ETXTBSY,
                    ) => unusable(&e),
                    _ => Err(e),
                };
            }
        };
        let meta = file.metadata()?;
        if !meta.file_type().is_file()
            || meta.nlink() != 1
            || meta.uid() != nix::unistd::geteuid().as_raw()
        {
            return unusable(&"not a plain file of ours with one link");
        }
        let stale = meta.len();
        SpoolWriter::begin(
            file,
            dir,
            spare.to_path_buf(),
            Area::Queue,
            header,
            None,
            stale,
        )
        .map(Some)
    }

    /// Writes the header into `file` (at `temp` in `dir`); from here on, dropping the writer
    /// removes the file.
    fn begin(
        file: File,
        dir: &Path,
        temp: PathBuf,
        area: Area,
        header: &[u8],
        preferred_id: Option<QueueId>,
        stale_len: u64,
    ) -> io::Result<SpoolWriter> {
        let mut writer = SpoolWriter {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            dir: dir.to_path_buf(),
            temp,
            area,
            size: 0,
            preferred_id,
            done: false,
            synced: false,
            header_len: 0,
            stale_len,
        };
        if let Some(f) = writer.file.as_mut() {
            match area {
                // The umask must not make it unreadable for the daemon.
                Area::Maildrop => f
                    .get_ref()
                    .set_permissions(fs::Permissions::from_mode(0o644))?,
                Area::Queue => adopt(f.get_ref(), dir)?,
            }
            f.write_all(header)?;
        }
        writer.header_len = header.len() as u64;
        Ok(writer)
    }
}

/// Retry state of one message, as kept in its sidecar.
#[derive(Debug, Default, Clone, PartialEq)]
struct RetryState {
    attempts: u32,
    next: Option<SystemTime>,
    error: Option<String>,
}

impl RetryState {
    fn encode(&self) -> String {
        let mut text = format!("attempts {}\n", self.attempts);
        if let Some(next) = self.next {
            text.push_str(&format!("next {}\n", encode_time(next)));
        }
        if let Some(error) = &self.error {
            text.push_str(&format!("error {}\n", escape(error.as_bytes())));
        }
        text
    }

    fn parse(text: &str) -> Option<RetryState> {
        let mut state = RetryState::default();
        for line in text.lines() {
            let (key, value) = line.split_once(' ')?;
            match key {
                "attempts" => state.attempts = value.parse().ok()?,
                "next" => state.next = Some(parse_time(value)?),
                "error" => {
                    state.error = Some(String::from_utf8_lossy(&unescape(value)?).into_owned())
                }
                _ => return None,
            }
        }
        Some(state)
    }
}

/// `%XX`-escapes every byte outside `!`..`~` and `%` itself.
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Like [`escape`] but keeps spaces and non-ASCII text readable: for reason files and logs
/// that humans read, where only control characters are dangerous.
pub(crate) fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            for b in c.to_string().bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if (0x21..=0x7e).contains(&b) {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

fn unescape_str(s: &str) -> Option<String> {
    String::from_utf8(unescape(s)?).ok()
}

fn encode_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

fn parse_time(s: &str) -> Option<SystemTime> {
    let (secs, micros) = s.split_once('.')?;
    if micros.len() != 6
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !micros.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let d = Duration::from_secs(secs.parse().ok()?) + Duration::from_micros(micros.parse().ok()?);
    UNIX_EPOCH.checked_add(d)
}

/// The header of a spool file for `envelope`, blank line included.
fn encode_header(envelope: &Envelope) -> io::Result<Vec<u8>> {
    let mut lines = vec![
        MAGIC.to_owned(),
        format!("arrival {}", encode_time(envelope.arrival)),
    ];
    lines.push(match &envelope.origin {
        Origin::Smtp { peer, helo } => format!("origin smtp {peer} {}", escape(helo.as_bytes())),
        Origin::Local { uid, user, .. } => {
            format!("origin local {uid} {}", escape(user.as_bytes()))
        }
    });
    if let Some(name) = envelope.origin.full_name() {
        lines.push(format!("fullname {}", escape(name.as_bytes())));
    }
    lines.push(format!("sender {}", escape(envelope.sender.as_bytes())));
    for rcpt in &envelope.recipients {
        lines.push(format!("rcpt {}", escape(rcpt.as_bytes())));
    }
    let mut out = Vec::new();
    for line in lines {
        if line.len() + 1 > MAX_HEADER_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "envelope field too long for the spool header",
            ));
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    if out.len() as u64 > MAX_HEADER_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "envelope too large for the spool header",
        ));
    }
    Ok(out)
}

/// Reads and checks a header, leaving `reader` at the first byte of the raw message.
/// Returns the envelope and the header's length in bytes (blank line included).
fn parse_header<R: BufRead>(reader: &mut R) -> Result<(Envelope, u64), FormatError> {
    let mut consumed: u64 = 0;
    let mut line = Vec::new();
    let mut arrival = None;
    let mut origin = None;
    let mut sender = None;
    // The full name and its line number, checked against the origin once both are read.
    let mut full_name: Option<(usize, String)> = None;
    let mut recipients = Vec::new();
    for number in 1.. {
        line.clear();
        let n = reader
            .by_ref()
            .take(MAX_HEADER_LINE as u64)
            .read_until(b'\n', &mut line)
            .map_err(FormatError::Io)?;
        consumed += n as u64;
        if consumed > MAX_HEADER_BYTES {
            return Err(FormatError::TooLong);
        }
        if line.last() != Some(&b'\n') {
            return Err(if n == MAX_HEADER_LINE {
                FormatError::TooLong
            } else if number == 1 {
                FormatError::BadMagic
            } else {
                FormatError::Truncated
            });
        }
        line.pop();
        let bad = |what| FormatError::BadLine { line: number, what };
        if number == 1 {
            if line != MAGIC.as_bytes() {
                return Err(FormatError::BadMagic);
            }
            continue;
        }
        if line.is_empty() {
            break;
        }
        let text = std::str::from_utf8(&line).map_err(|_| bad("not ASCII"))?;
        let (key, value) = text.split_once(' ').ok_or_else(|| bad("no value"))?;
        match key {
            "arrival" if arrival.is_none() => {
                arrival = Some(parse_time(value).ok_or_else(|| bad("bad time"))?)
            }
            "origin" if origin.is_none() => {
                origin = Some(parse_origin(value).ok_or_else(|| bad("bad origin"))?)
            }
            "sender" if sender.is_none() => {
                sender = Some(unescape_str(value).ok_or_else(|| bad("bad escape"))?)
            }
            "fullname" if full_name.is_none() => {
                let name = unescape_str(value).ok_or_else(|| bad("bad escape"))?;
                full_name = Some((number, cap_full_name(&name)));
            }
            "rcpt" => recipients.push(unescape_str(value).ok_or_else(|| bad("bad escape"))?),
            "arrival" | "origin" | "sender" | "fullname" => return Err(bad("field given twice")),
            _ => return Err(bad("unknown key")),
        }
    }
    let mut origin = origin.ok_or(FormatError::Missing("origin"))?;
    if let Some((line, name)) = full_name {
        match &mut origin {
            Origin::Local { full_name, .. } => *full_name = Some(name),
            Origin::Smtp { .. } => {
                return Err(FormatError::BadLine {
                    line,
                    what: "full name without a local origin",
                })
            }
        }
    }
    let envelope = Envelope {
        arrival: arrival.ok_or(FormatError::Missing("arrival"))?,
        origin,
        sender: sender.ok_or(FormatError::Missing("sender"))?,
        recipients,
    };
    Ok((envelope, consumed))
}

fn parse_origin(value: &str) -> Option<Origin> {
    let mut parts = value.splitn(3, ' ');
    let kind = parts.next()?;
    let first = parts.next()?;
    let second = unescape_str(parts.next()?)?;
    match kind {
        "smtp" => Some(Origin::Smtp {
            peer: first.parse::<SocketAddr>().ok()?,
            helo: second,
        }),
        "local" => Some(Origin::Local {
            uid: first.parse().ok()?,
            user: second,
            // From its own line, if any (see `parse_header`).
            full_name: None,
        }),
        _ => None,
    }
}

fn check_id(id: &QueueId) -> io::Result<()> {
    if id.is_valid() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid queue ID {}", escape(id.0.as_bytes())),
        ))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The login name of `uid`, or `uid<N>` when it has none.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => format!("uid{uid}"),
    }
}

/// 128 unpredictable bits as hex, for names other users must not guess. `RandomState` keys
/// come from the operating system's random source once per thread and are never revealed,
/// so SipHash under them is unpredictable without opening any device (the shim may run in
/// a chroot without `/dev/urandom`).
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut halves = [0u64; 2];
    for (i, half) in halves.iter_mut().enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(count);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_usize(i);
        *half = h.finish();
    }
    format!("{:016x}{:016x}", halves[0], halves[1])
}

fn temp_name() -> String {
    format!("{TEMP_PREFIX}{}.{}", std::process::id(), random_hex())
}

/// Renames without replacing an existing target (`AlreadyExists` then).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(()),
            // File systems without renameat2 flags: fall back to link + unlink below.
            Err(Errno::EINVAL) | Err(Errno::ENOSYS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    fs::hard_link(from, to)?;
    fs::remove_file(from)
}

/// Gives `file` to the owner of `dir` when we are root and `dir` is someone else's, so that
/// the daemon can still read what root wrote into its spool.
fn adopt(file: &File, dir: &Path) -> io::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let meta = fs::metadata(dir)?;
    let own = file.metadata()?;
    if meta.uid() != own.uid() || meta.gid() != own.gid() {
        std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

/// Creates `path` if missing and gives it `mode` (and `owner`), without following a link.
fn ensure_dir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    let created = match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(e),
    };
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(path)
        .map_err(|e| {
            io::Error::new(e.kind(), format!("spool directory {}: {e}", path.display()))
        })?;
    let meta = dir.metadata()?;
    if let Some((uid, gid)) = owner {
        if meta.uid() != uid || meta.gid() != gid {
            std::os::unix::fs::fchown(&dir, Some(uid), Some(gid))?;
        }
    }
    // chown may clear the sticky and set-id bits, so the mode comes after it.
    if meta.mode() & 0o7777 != mode || owner.is_some() {
        dir.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    if created {
        sync_created_dir(path)?;
    }
    Ok(())
}

/// Makes a directory just created durable: its own block (`.` and `..`) and its entry in
/// the parent. On a file system without a journal nothing else writes them out before mail
/// is committed into it, and after a power cut fsck would find the directory corrupt.
fn sync_created_dir(path: &Path) -> io::Result<()> {
    fsync_dir(path)?;
    match path.parent().map(fsync_dir) {
        // A parent we may create in but not read (mode 0711): nothing we can do.
        Some(Err(e)) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
        Some(other) => other,
        None => Ok(()),
    }
}

/// The names in `dir` (without `.` and `..`).
fn read_names(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name());
    }
    Ok(names)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes temporary files in `dir` whose writer is gone (its pid, from the name, no longer
/// exists) or that are older than [`STALE_TEMP_AGE`].
fn remove_stale_temps(dir: &Path) -> io::Result<()> {
    let now = SystemTime::now();
    for name in read_names(dir)? {
        let Some(rest) = name.as_bytes().strip_prefix(TEMP_PREFIX.as_bytes()) else {
            continue;
        };
        let pid = std::str::from_utf8(rest)
            .ok()
            .and_then(|r| r.split('.').next())
            .and_then(|p| p.parse::<i32>().ok())
            .filter(|p| *p > 0);
        let writer_gone = match pid {
            Some(pid) if pid as u32 == std::process::id() => false,
            Some(pid) => matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                Err(Errno::ESRCH)
            ),
            None => true,
        };
        let path = dir.join(&name);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue; // gone meanwhile
        };
        // Only our writers' files: in maildrop/ anyone may make a `.tmp.` directory (one
        // with files inside cannot be removed), and one entry must never stop the others.
        if !meta.file_type().is_file() {
            log::debug!(
                "{}/{}: not a file; left alone",
                dir.display(),
                escape(name.as_bytes())
            );
            continue;
        }
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if writer_gone || old {
            match remove_if_exists(&path) {
                Ok(()) => log::info!(
                    "removed leftover temporary file {}/{}",
                    dir.display(),
                    escape(name.as_bytes())
                ),
                Err(e) => log::warn!(
                    "cannot remove leftover temporary file {}/{}: {e}",
                    dir.display(),
                    escape(name.as_bytes())
                ),
            }
        }
    }
    Ok(())
}

/// fsyncs a directory, so that renames and unlinks in it are durable.
fn fsync_dir(dir: &Path) -> io::Result<()> {
    let d = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).bits())
        .open(dir)?;
    d.sync_all()
}

/// fsyncs `dir`, or, when this process may not open it (an unprivileged user and the 1733
/// maildrop), the whole file system through `file`, which commits the rename just the same.
fn fsync_dir_or_fs(dir: &Path, file: &File) -> io::Result<()> {
    match fsync_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            nix::unistd::syncfs(file.as_fd()).map_err(io::Error::from)
        }
        other => other,
    }
}

/// Writes `name` in `dir` atomically: temporary file, fsync, rename over, directory fsync.
fn write_atomic(dir: &Path, name: &str, content: &[u8], mode: u32) -> io::Result<()> {
    let temp = dir.join(temp_name());
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&temp)?;
        adopt(&file, dir)?;
        file.write_all(content)?;
        file.sync_data()?;
        fs::rename(&temp, dir.join(name))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::MAX_FULL_NAME;
    use std::net::{IpAddr, Ipv6Addr};

    #[test]
    fn syncfs_only_where_it_is_known_to_work() {
        let dir = std::env::temp_dir().join(format!("smtp_bridge-fstype-{}", std::process::id()));
        let spool = Spool::new(&dir);
        spool.prepare(None).unwrap();
        let fs = spool.fs_sync().unwrap();
        let on_ext4_or_tmpfs = fs.known_file_system();
        let _ = fs::remove_dir_all(&dir);
        // This machine's temporary directory (ext4 here, tmpfs on many others).
        on_ext4_or_tmpfs.unwrap();
        // procfs stands for any file system syncfs is not known to make durable.
        let proc = FsSync {
            dir: File::open("/proc").unwrap(),
        };
        let err = proc.known_file_system().unwrap_err();
        assert!(err.contains("type 0x9fa0"), "{err}");
    }

    #[test]
    fn kernel_releases() {
        assert_eq!(kernel_at_least("6.1.0-18-amd64", (5, 8)), Some(true));
        assert_eq!(kernel_at_least("5.8.0", (5, 8)), Some(true));
        assert_eq!(kernel_at_least("5.10.0-28-cloud-amd64", (5, 8)), Some(true));
        assert_eq!(kernel_at_least("5.4.0-150-generic", (5, 8)), Some(false));
        assert_eq!(kernel_at_least("4.19.0", (5, 8)), Some(false));
        assert_eq!(kernel_at_least("6.18.44-fc", (5, 8)), Some(true));
        assert_eq!(kernel_at_least("garbage", (5, 8)), None);
        assert_eq!(kernel_at_least("6", (5, 8)), None);
    }

    fn envelope(origin: Origin) -> Envelope {
        Envelope {
            sender: "a b%c\r\nrcpt evil@x@example.org".into(),
            recipients: vec![
                "bob@example.org".into(),
                "".into(),
                "caf\u{e9}@\u{1F600}.example".into(),
            ],
            origin,
            arrival: UNIX_EPOCH + Duration::from_micros(1_795_529_786_123_456),
        }
    }

    #[test]
    fn header_round_trips_hostile_fields() {
        let origins = [
            Origin::Local {
                uid: 1000,
                user: "ali ce\n".into(),
                full_name: None,
            },
            Origin::Smtp {
                peer: SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 2525),
                helo: "".into(),
            },
            Origin::Smtp {
                peer: "127.0.0.1:4".parse().unwrap(),
                helo: "x y\r\nrcpt z".into(),
            },
        ];
        for origin in origins {
            let env = envelope(origin);
            let header = encode_header(&env).unwrap();
            // One line per field, nothing injected.
            let text = std::str::from_utf8(&header).unwrap();
            assert!(text.is_ascii());
            assert_eq!(text.lines().filter(|l| l.starts_with("rcpt ")).count(), 3);
            let mut raw = header.clone();
            raw.extend_from_slice(b"Subject: x\r\n\r\nbody");
            let mut reader = &raw[..];
            let (parsed, len) = parse_header(&mut reader).unwrap();
            assert_eq!(parsed, env);
            assert_eq!(len, header.len() as u64);
            assert_eq!(reader, b"Subject: x\r\n\r\nbody");
        }
    }

    #[test]
    fn garbage_headers_are_format_errors() {
        let good = String::from_utf8(
            encode_header(&envelope(Origin::Local {
                uid: 0,
                user: "root".into(),
                full_name: None,
            }))
            .unwrap(),
        )
        .unwrap();
        let long = format!("{MAGIC}\nsender {}\n\n", "a".repeat(MAX_HEADER_LINE));
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "BadMagic"),
            ("From x\n\nbody".into(), "BadMagic"),
            ("smtp_bridge-spool 2\n\n".into(), "BadMagic"),
            (good.trim_end().to_owned(), "Truncated"),
            (good.replace("arrival ", "arrival x"), "BadLine"),
            (good.replace("sender ", "sender a%zz"), "BadLine"),
            (good.replace("sender ", "sender \u{1}"), "BadLine"),
            (good.replace("origin local", "origin remote"), "BadLine"),
            (good.replace("rcpt ", "bcc "), "BadLine"),
            (good.replacen("rcpt ", "sender x\nrcpt ", 1), "BadLine"),
            (good.replace("origin", "x-origin"), "BadLine"),
            (
                format!("{MAGIC}\nsender a\norigin local 1 a\n\n"),
                "Missing",
            ),
            (long, "TooLong"),
        ];
        for (text, want) in cases {
            let err = parse_header(&mut text.as_bytes()).unwrap_err();
            let got = format!("{err:?}");
            assert!(got.starts_with(want), "{text:?}: got {got}, want {want}");
        }
    }

    /// A file written before the `fullname` line existed still reads, with no full name,
    /// and is written back the same.
    #[test]
    fn old_header_without_full_name_reads() {
        let old = "smtp_bridge-spool 1\narrival 1795529786.123456\norigin local 1000 alice\n\
                   sender alice@example.org\nrcpt root\nrcpt carol%20x@example.org\n\n\
                   Subject: hi\n\nbody\n";
        let mut reader = old.as_bytes();
        let (env, len) = parse_header(&mut reader).unwrap();
        assert_eq!(
            env,
            Envelope {
                sender: "alice@example.org".into(),
                recipients: vec!["root".into(), "carol x@example.org".into()],
                origin: Origin::Local {
                    uid: 1000,
                    user: "alice".into(),
                    full_name: None,
                },
                arrival: UNIX_EPOCH + Duration::from_micros(1_795_529_786_123_456),
            }
        );
        assert_eq!(reader, b"Subject: hi\n\nbody\n");
        let header = encode_header(&env).unwrap();
        assert_eq!(header.len() as u64, len);
        assert_eq!(&old.as_bytes()[..header.len()], &header[..]);
    }

    #[test]
    fn full_name_round_trips_hostile_text() {
        let names = [
            "Jane Roe".to_owned(),
            String::new(),
            " ".to_owned(),
            "Jane\r\nrcpt evil@x\nsender y".to_owned(),
            "%41 \u{0}\u{1b}[31m\u{7f}\u{202e}caf\u{e9} \u{1F600}".to_owned(),
            cap_full_name(&"\u{e9}".repeat(MAX_FULL_NAME)),
        ];
        for name in names {
            let env = envelope(Origin::Local {
                uid: 1000,
                user: "alice".into(),
                full_name: Some(name.clone()),
            });
            let header = encode_header(&env).unwrap();
            let text = std::str::from_utf8(&header).unwrap();
            assert!(text.is_ascii());
            assert_eq!(
                text.lines().filter(|l| l.starts_with("fullname ")).count(),
                1
            );
            assert_eq!(text.lines().filter(|l| l.starts_with("rcpt ")).count(), 3);
            let (parsed, _) = parse_header(&mut &header[..]).unwrap();
            assert_eq!(parsed.origin.full_name(), Some(name.as_str()));
            assert_eq!(parsed, env);
        }
    }

    /// A maildrop file is anyone's text: an oversized name is cut, never refused, and
    /// what is kept always fits a header again when the file is queued.
    #[test]
    fn huge_full_name_is_cut_when_read() {
        for unit in ["a", "%C3%A9", "%0A"] {
            let value = unit.repeat((MAX_HEADER_LINE - 100) / unit.len());
            let text = format!(
                "{MAGIC}\narrival 1.000000\norigin local 1 a\nfullname {value}\nsender s\n\n"
            );
            let (env, _) = parse_header(&mut text.as_bytes()).unwrap();
            let name = env.origin.full_name().unwrap();
            assert!(name.len() <= MAX_FULL_NAME && name.len() > MAX_FULL_NAME - 4);
            assert!(value.starts_with(&escape(name.as_bytes())));
            encode_header(&env).unwrap();
        }
    }

    #[test]
    fn bad_full_name_lines_are_format_errors() {
        let base = format!("{MAGIC}\narrival 1.000000\norigin local 1 a\nsender s\n");
        let cases = [
            format!("{base}fullname a\nfullname b\n\n"),
            format!("{base}fullname a%zz\n\n"),
            format!("{base}fullname a b\n\n"),
            format!("{base}fullname %FF%FE\n\n"),
            format!("{base}fullname \u{e9}\n\n"),
            format!("{base}fullname\n\n"),
            format!(
                "{MAGIC}\narrival 1.000000\norigin smtp 127.0.0.1:1 h\nfullname x\nsender s\n\n"
            ),
        ];
        for text in cases {
            let err = parse_header(&mut text.as_bytes()).unwrap_err();
            assert!(
                matches!(err, FormatError::BadLine { .. }),
                "{text:?}: {err:?}"
            );
        }
    }

    #[test]
    fn escape_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let escaped = escape(&all);
        assert!(escaped.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert_eq!(unescape(&escaped).unwrap(), all);
        assert_eq!(unescape("%4"), None);
        assert_eq!(unescape("a b"), None);
    }

    #[test]
    fn retry_state_round_trips() {
        let state = RetryState {
            attempts: 7,
            next: Some(UNIX_EPOCH + Duration::from_micros(1_795_529_786_000_001)),
            error: Some("connection refused\nrcpt x".into()),
        };
        assert_eq!(RetryState::parse(&state.encode()), Some(state));
        assert_eq!(RetryState::parse("attempts x\n"), None);
        assert_eq!(RetryState::parse("bogus 1\n"), None);
    }

    #[test]
    fn ids_are_valid_increasing_and_timed() {
        let mut last = QueueId::generate();
        for _ in 0..10_000 {
            let id = QueueId::generate();
            assert!(id.is_valid(), "{id}");
            assert!(id > last, "{id} <= {last}");
            last = id;
        }
        let t = last.time().unwrap();
        let now = SystemTime::now();
        assert!(t <= now && now.duration_since(t).unwrap() < Duration::from_secs(60));
        for bad in ["", "../etc/passwd", "0123456789abcdef0123456789", "X"] {
            assert!(!QueueId(bad.into()).is_valid());
        }
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("h\u{e9}llo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
