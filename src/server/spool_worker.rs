//! The spool worker: the thread that does the event loop's disk I/O, so that no write or
//! fsync ever blocks the loop.
//!
//! Jobs arrive over a channel in the order each connection produced them (open, writes,
//! commit or abort). The worker handles every job that is ready, then makes all the commits of
//! that batch durable with one directory fsync (group commit: twenty sessions finishing DATA
//! together share one `sync_dir`), sends the results back and wakes the loop through its
//! [`mio::Waker`]. Write acknowledgements travel the same way and release the per-connection
//! backpressure in the loop.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use mio::Waker;

use crate::envelope::Envelope;
use crate::spool::{QueueId, Spool, SpoolWriter};

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
}

/// How well group commit works, logged when the worker stops.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Messages made durable.
    pub commits: AtomicU64,
    /// Directory fsyncs it took.
    pub syncs: AtomicU64,
}

impl SpoolWorker {
    /// Starts the thread.
    pub fn spawn(spool: Spool, waker: Arc<Waker>) -> io::Result<SpoolWorker> {
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let worker_stats = stats.clone();
        let handle = thread::Builder::new()
            .name("spool".to_owned())
            .spawn(move || run(spool, jobs_rx, done_tx, waker, &worker_stats))?;
        Ok(SpoolWorker {
            jobs: Some(jobs_tx),
            done: done_rx,
            handle: Some(handle),
            stats,
        })
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
            "spool worker: {} messages committed with {} directory syncs",
            self.stats.commits.load(Ordering::Relaxed),
            self.stats.syncs.load(Ordering::Relaxed)
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

/// Results gathered during one batch.
#[derive(Default)]
struct Batch {
    acks: HashMap<usize, usize>,
    committed: Vec<(usize, Committed)>,
    failed: Vec<(usize, String)>,
    bytes: usize,
}

fn run(spool: Spool, jobs: Receiver<Job>, done: Sender<Done>, waker: Arc<Waker>, stats: &Stats) {
    let mut slots: HashMap<usize, Slot> = HashMap::new();
    while let Ok(first) = jobs.recv() {
        let mut batch = Batch::default();
        let mut next = Some(first);
        while let Some(job) = next {
            handle(&spool, &mut slots, &mut batch, job);
            if batch.bytes >= BATCH_BYTES {
                break;
            }
            next = match jobs.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => None,
            };
        }
        if !finish(&spool, batch, &done, stats) {
            break;
        }
        if let Err(e) = waker.wake() {
            log::error!("cannot wake the event loop: {e}");
        }
    }
    // The loop is gone: dropping the writers removes their temporary files.
    slots.clear();
}

fn handle(spool: &Spool, slots: &mut HashMap<usize, Slot>, batch: &mut Batch, job: Job) {
    match job {
        Job::Open {
            conn,
            log_id,
            envelope,
        } => {
            let slot = match spool.create(&envelope) {
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
        Job::Commit { conn } => match slots.remove(&conn) {
            Some(Slot::Writing {
                writer,
                sender,
                nrcpt,
                log_id,
            }) => {
                let size = writer.size();
                match writer.commit_file() {
                    Ok(id) => batch.committed.push((
                        conn,
                        Committed {
                            id,
                            sender,
                            nrcpt,
                            size,
                        },
                    )),
                    Err(e) => {
                        log::error!("conn={log_id} cannot commit spool file: {e}");
                        batch.failed.push((conn, e.to_string()));
                    }
                }
            }
            Some(Slot::Failed(reason)) => batch.failed.push((conn, reason)),
            None => batch
                .failed
                .push((conn, "no message was started".to_owned())),
        },
        Job::Abort { conn } => {
            slots.remove(&conn);
        }
    }
}

/// Makes the batch's commits durable with one directory fsync and reports everything.
/// Returns false when the loop is gone.
fn finish(spool: &Spool, batch: Batch, done: &Sender<Done>, stats: &Stats) -> bool {
    let mut results: Vec<Done> = Vec::new();
    for (conn, bytes) in batch.acks {
        results.push(Done::Written { conn, bytes });
    }
    if !batch.committed.is_empty() {
        let synced = spool.sync_dir();
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        match synced {
            Ok(()) => {
                stats
                    .commits
                    .fetch_add(batch.committed.len() as u64, Ordering::Relaxed);
                for (conn, c) in batch.committed {
                    results.push(Done::Committed {
                        conn,
                        result: Ok(c),
                    });
                }
            }
            Err(e) => {
                // The files are in queue/ and will probably be delivered, but we cannot say
                // they are safe: the client gets 452 and may send again. A duplicate is
                // better than a lost message.
                log::error!("cannot sync the spool directory: {e}");
                for (conn, c) in batch.committed {
                    log::warn!(
                        "{}: not confirmed to the client (directory sync failed)",
                        c.id
                    );
                    results.push(Done::Committed {
                        conn,
                        result: Err(e.to_string()),
                    });
                }
            }
        }
    }
    for (conn, reason) in batch.failed {
        results.push(Done::Committed {
            conn,
            result: Err(reason),
        });
    }
    results.into_iter().all(|r| done.send(r).is_ok())
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

    /// Collects `n` results, waiting on the waker's poll as the event loop would.
    fn collect(poll: &mut mio::Poll, worker: &SpoolWorker, n: usize) -> Vec<Done> {
        let mut events = mio::Events::with_capacity(8);
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while out.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} results",
                out.len()
            );
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            while let Some(d) = worker.try_recv() {
                out.push(d);
            }
        }
        out
    }

    #[test]
    fn commits_in_order_acknowledges_writes_and_reports_failures() {
        let root = std::env::temp_dir().join(format!("smtp_bridge-worker-{}", std::process::id()));
        let _cleanup = TempSpool(root.clone());
        let spool = Spool::new(&root);
        spool.prepare(None).unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let worker = SpoolWorker::spawn(spool.clone(), waker).unwrap();

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
        let root = std::env::temp_dir().join(format!("smtp_bridge-group-{}", std::process::id()));
        let _cleanup = TempSpool(root.clone());
        let spool = Spool::new(&root);
        spool.prepare(None).unwrap();
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
        let stats = Stats::default();
        run(spool.clone(), jobs_rx, done_tx, waker, &stats);
        let ok = done_rx
            .iter()
            .filter(|d| matches!(d, Done::Committed { result: Ok(_), .. }))
            .count();
        assert_eq!(ok, 5);
        assert_eq!(stats.commits.load(Ordering::Relaxed), 5);
        assert_eq!(stats.syncs.load(Ordering::Relaxed), 1);
        assert_eq!(spool.list().unwrap().len(), 5);
    }
}
