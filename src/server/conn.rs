//! One client connection: its socket, its [`Session`], its buffers and deadlines, and the
//! non-blocking I/O that moves bytes between them.
//!
//! Every buffer is bounded: input is read in [`READ_CHUNK`] pieces and only when the previous
//! piece was consumed; message bytes waiting for the spool worker are capped by
//! [`MAX_IN_FLIGHT`] (the socket is not read meanwhile, so TCP flow control pushes back on the
//! client); replies are capped by [`MAX_OUTPUT`] the same way.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use mio::net::TcpStream;

use super::spool_worker::Job;
use crate::envelope::{Envelope, Origin};
use crate::smtp::{Event, Session};

/// Bytes read from a socket at a time (the loop's shared scratch buffer).
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// Message bytes gathered before they are handed to the spool worker as one job.
const DATA_FLUSH: usize = 64 * 1024;
/// Message bytes a connection may have queued for the worker, not yet acknowledged, before
/// the loop stops reading its socket. 20 connections × 256 KiB keeps the daemon far below
/// its memory bound whatever the message sizes.
pub(crate) const MAX_IN_FLIGHT: usize = 256 * 1024;
/// Unsent reply bytes beyond which the loop stops reading a client that does not read its
/// replies (a pipelining client with 1,000 recipients needs about 30 KiB).
const MAX_OUTPUT: usize = 256 * 1024;

/// Why a connection ends, for the `disconnect` log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The session ended normally (QUIT, or the engine closed it after an error reply).
    Quit,
    /// The client closed its side.
    Eof,
    /// No command within `idle_timeout`.
    IdleTimeout,
    /// The session lasted longer than `session_timeout`.
    SessionTimeout,
    /// The daemon is shutting down.
    Shutdown,
    /// A socket error (reset, broken pipe).
    Error,
    /// The engine broke its contract (consumed nothing yet asked for input).
    Internal,
}

impl Reason {
    /// The `reason=` value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Quit => "quit",
            Reason::Eof => "eof",
            Reason::IdleTimeout => "idle timeout",
            Reason::SessionTimeout => "session timeout",
            Reason::Shutdown => "shutdown",
            Reason::Error => "io error",
            Reason::Internal => "internal error",
        }
    }
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The log ID (`conn=ID`).
    pub id: u64,
    /// The client socket (non-blocking, registered with the poller).
    pub stream: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The SMTP engine for this connection.
    pub session: Session,
    /// Input the session has not consumed yet (only while it waits for a commit, or while
    /// backpressure holds it back). At most one [`READ_CHUNK`].
    pub inbuf: Vec<u8>,
    /// Replies not yet written.
    pub out: Vec<u8>,
    /// Message bytes not yet handed to the worker.
    pending: Vec<u8>,
    /// Message bytes handed to the worker and not yet acknowledged.
    pub in_flight: usize,
    /// A spool file is open in the worker (Open sent, no Commit/Abort yet).
    pub spool_open: bool,
    /// A Commit was sent and its result has not arrived.
    pub commit_pending: bool,
    /// The client closed its sending side.
    pub peer_eof: bool,
    /// Set once the connection is to be closed after its output is flushed.
    pub closing: Option<Reason>,
    /// The idle limit of this session (from the configuration it started with).
    pub idle_timeout: std::time::Duration,
    /// When the idle timeout strikes.
    pub idle_deadline: Instant,
    /// When the session timeout strikes.
    pub session_deadline: Instant,
    /// When a closing connection is dropped even if its output is not flushed.
    pub linger_deadline: Option<Instant>,
    /// The key under which the connection sits in the loop's timer set, if it does.
    pub timer_key: Option<Instant>,
    /// Whether WRITABLE interest is registered.
    pub writable: bool,
}

/// Where a connection's jobs go. A job the worker cannot take (it is gone) is answered by
/// the sink itself, so the session still gets its 452 and never waits forever.
pub(crate) trait JobSink {
    /// Queues a job for the spool worker.
    fn submit(&mut self, job: Job);
}

impl Conn {
    /// A new connection; the caller writes the greeting.
    pub(crate) fn new(
        id: u64,
        stream: TcpStream,
        peer: SocketAddr,
        session: Session,
        now: Instant,
        idle_timeout: std::time::Duration,
        session_timeout: std::time::Duration,
    ) -> Conn {
        let idle_deadline = now + idle_timeout;
        Conn {
            id,
            stream,
            peer,
            session,
            inbuf: Vec::new(),
            out: Vec::new(),
            pending: Vec::new(),
            in_flight: 0,
            spool_open: false,
            commit_pending: false,
            peer_eof: false,
            closing: None,
            idle_timeout,
            idle_deadline,
            session_deadline: now + session_timeout,
            linger_deadline: None,
            timer_key: None,
            writable: false,
        }
    }

    /// The next instant at which a timer must look at this connection.
    pub(crate) fn deadline(&self) -> Instant {
        match self.linger_deadline {
            Some(l) => l,
            None => self.idle_deadline.min(self.session_deadline),
        }
    }

    /// Marks the connection for closing (first reason wins) and bounds how long it may take.
    pub(crate) fn close_after_flush(
        &mut self,
        reason: Reason,
        now: Instant,
        linger: std::time::Duration,
    ) {
        if self.closing.is_none() {
            self.closing = Some(reason);
            self.linger_deadline = Some(now + linger);
        }
    }

    /// Whether the loop should read more from the socket now.
    pub(crate) fn can_read(&self) -> bool {
        self.closing.is_none()
            && !self.peer_eof
            && self.inbuf.is_empty()
            && !self.session.is_waiting()
            && self.in_flight + self.pending.len() <= MAX_IN_FLIGHT
            && self.out.len() <= MAX_OUTPUT
    }

    /// Whether buffered input can be fed to the session now.
    fn can_feed(&self) -> bool {
        self.closing.is_none()
            && !self.inbuf.is_empty()
            && !self.session.is_waiting()
            && self.in_flight + self.pending.len() <= MAX_IN_FLIGHT
    }

    /// Feeds what is in `inbuf`, keeping what the session did not consume.
    pub(crate) fn feed_buffered(&mut self, token: usize, jobs: &mut dyn JobSink, now: Instant) {
        if !self.can_feed() {
            return;
        }
        let input = std::mem::take(&mut self.inbuf);
        let used = self.feed(token, &input, jobs, now);
        if used < input.len() {
            self.inbuf = input[used..].to_vec();
        }
    }

    /// Feeds fresh input; what is not consumed is kept in `inbuf`.
    pub(crate) fn feed_fresh(
        &mut self,
        token: usize,
        input: &[u8],
        jobs: &mut dyn JobSink,
        now: Instant,
    ) {
        let used = self.feed(token, input, jobs, now);
        if used < input.len() {
            self.inbuf.extend_from_slice(&input[used..]);
        }
    }

    /// Drives the session over `input` as its contract asks (see [`crate::smtp`]): repeated
    /// `feed` calls until it needs input, waits or closes. Returns how much was consumed.
    fn feed(&mut self, token: usize, input: &[u8], jobs: &mut dyn JobSink, now: Instant) -> usize {
        let mut pos = 0;
        loop {
            let (n, event) = self.session.feed(&input[pos..], &mut self.out);
            // Never trust a count past the end: slicing beyond it would panic the loop.
            pos = (pos + n).min(input.len());
            match event {
                Event::NeedInput => {
                    if pos < input.len() {
                        if n == 0 {
                            // The engine promised to consume everything; if it did not, and
                            // made no progress, feeding again would spin forever.
                            log::error!(
                                "conn={} session consumed nothing of {} bytes; closing",
                                self.id,
                                input.len() - pos
                            );
                            self.close_after_flush(Reason::Internal, now, super::LINGER);
                            return input.len();
                        }
                        continue;
                    }
                    break;
                }
                Event::MessageStart(tx) => {
                    let envelope = Envelope {
                        sender: tx.sender,
                        recipients: tx.recipients,
                        origin: Origin::Smtp {
                            peer: self.peer,
                            helo: tx.helo,
                        },
                        arrival: SystemTime::now(),
                    };
                    self.pending.clear();
                    self.spool_open = true;
                    jobs.submit(Job::Open {
                        conn: token,
                        log_id: self.id,
                        envelope: Box::new(envelope),
                    });
                }
                Event::Data(bytes) => {
                    self.pending.extend_from_slice(bytes);
                    if self.pending.len() >= DATA_FLUSH {
                        self.flush_pending(token, jobs);
                    }
                }
                Event::MessageEnd => {
                    self.flush_pending(token, jobs);
                    self.spool_open = false;
                    self.commit_pending = true;
                    jobs.submit(Job::Commit { conn: token });
                }
                Event::MessageAbort => {
                    self.pending.clear();
                    if self.spool_open {
                        self.spool_open = false;
                        jobs.submit(Job::Abort { conn: token });
                    }
                }
                Event::Waiting => break,
                Event::Close => {
                    self.close_after_flush(Reason::Quit, now, super::LINGER);
                    break;
                }
            }
            // Backpressure: stop consuming while too much is queued for the worker; the rest
            // stays in `inbuf` until the worker acknowledges.
            if self.in_flight + self.pending.len() > MAX_IN_FLIGHT {
                self.flush_pending(token, jobs);
                break;
            }
        }
        self.flush_pending(token, jobs);
        pos
    }

    /// Hands gathered message bytes to the worker.
    fn flush_pending(&mut self, token: usize, jobs: &mut dyn JobSink) {
        if self.pending.is_empty() || !self.spool_open {
            self.pending.clear();
            return;
        }
        let data = std::mem::replace(&mut self.pending, Vec::with_capacity(0));
        self.in_flight += data.len();
        jobs.submit(Job::Write { conn: token, data });
    }

    /// Writes pending replies until done or the socket is full. `Err` means the connection
    /// is broken.
    pub(crate) fn flush_output(&mut self) -> io::Result<()> {
        let mut written = 0;
        let result = loop {
            if written == self.out.len() {
                break Ok(());
            }
            match self.stream.write(&self.out[written..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            }
        };
        self.out.drain(..written);
        if self.out.capacity() > MAX_OUTPUT && self.out.is_empty() {
            self.out = Vec::new();
        }
        result
    }

    /// Reads one chunk into `buf`. `Ok(None)`: nothing to read now (WouldBlock).
    /// `Ok(Some(0))`: the client closed its side.
    pub(crate) fn read_chunk(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match self.stream.read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::SessionConfig;
    use std::time::Duration;

    /// Records jobs instead of sending them to a worker.
    #[derive(Default)]
    struct Recorder(Vec<Job>);

    impl JobSink for Recorder {
        fn submit(&mut self, job: Job) {
            self.0.push(job);
        }
    }

    fn conn() -> (Conn, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let session = Session::new(SessionConfig {
            hostname: "test.example".to_owned(),
            banner: String::new(),
            max_message_size: 64 << 20,
            max_recipients: 100,
            max_line_length: 2048,
        });
        let c = Conn::new(
            1,
            TcpStream::from_std(server),
            peer,
            session,
            Instant::now(),
            Duration::from_secs(300),
            Duration::from_secs(3600),
        );
        (c, client)
    }

    fn kinds(jobs: &[Job]) -> String {
        jobs.iter()
            .map(|j| match j {
                Job::Open { .. } => "open ",
                Job::Write { .. } => "write ",
                Job::Commit { .. } => "commit ",
                Job::Abort { .. } => "abort ",
            })
            .collect()
    }

    fn written(jobs: &[Job]) -> Vec<u8> {
        jobs.iter()
            .flat_map(|j| match j {
                Job::Write { data, .. } => data.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn a_pipelined_transaction_becomes_open_write_commit_and_keeps_the_rest() {
        let (mut c, _client) = conn();
        let mut jobs = Recorder::default();
        c.session.greeting(&mut c.out);
        let input = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<root>\r\nDATA\r\n\
Subject: s\r\n\r\n..dot\r\n.\r\nQUIT\r\n";
        c.feed_fresh(7, input, &mut jobs, Instant::now());
        assert_eq!(kinds(&jobs.0), "open write commit ");
        assert!(matches!(jobs.0[0], Job::Open { conn: 7, .. }));
        assert_eq!(written(&jobs.0), b"Subject: s\r\n\r\n.dot\r\n");
        // Waiting for the commit: QUIT stays buffered and the socket is not read.
        assert!(c.commit_pending && c.session.is_waiting());
        assert_eq!(c.inbuf, b"QUIT\r\n");
        assert!(!c.can_read());
        c.commit_pending = false;
        c.session.committed(Ok("ABC123"), &mut c.out);
        c.feed_buffered(7, &mut jobs, Instant::now());
        assert!(c.inbuf.is_empty());
        assert_eq!(c.closing, Some(Reason::Quit));
        let out = String::from_utf8_lossy(&c.out);
        assert!(out.contains("queued as ABC123"), "{out}");
    }

    #[test]
    fn backpressure_stops_consuming_until_the_worker_acknowledges() {
        let (mut c, _client) = conn();
        let mut jobs = Recorder::default();
        c.session.greeting(&mut c.out);
        c.feed_fresh(
            1,
            b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<root>\r\nDATA\r\n",
            &mut jobs,
            Instant::now(),
        );
        let line = b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n";
        let body: Vec<u8> = line.repeat(MAX_IN_FLIGHT * 3 / line.len());
        let mut sent = 0;
        let mut pauses = 0;
        while sent < body.len() {
            // As the loop does: read only when allowed, at most one chunk at a time.
            assert!(c.can_read());
            let end = (sent + READ_CHUNK).min(body.len());
            c.feed_fresh(1, &body[sent..end], &mut jobs, Instant::now());
            sent = end;
            assert!(c.in_flight <= MAX_IN_FLIGHT + DATA_FLUSH + READ_CHUNK);
            if !c.can_read() {
                pauses += 1;
                // The worker catches up.
                c.in_flight = 0;
                c.feed_buffered(1, &mut jobs, Instant::now());
            }
        }
        assert!(pauses >= 2, "backpressure never engaged");
        c.feed_fresh(1, b".\r\n", &mut jobs, Instant::now());
        assert!(c.commit_pending);
        assert_eq!(written(&jobs.0), body);
    }

    #[test]
    fn a_client_gone_mid_message_reads_as_eof_with_the_file_still_open() {
        let (mut c, client) = conn();
        let mut jobs = Recorder::default();
        c.session.greeting(&mut c.out);
        c.feed_fresh(
            1,
            b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<root>\r\nDATA\r\npartial\r\n",
            &mut jobs,
            Instant::now(),
        );
        assert!(c.spool_open);
        drop(client);
        let mut buf = [0u8; 64];
        let mut got = None;
        for _ in 0..100 {
            match c.read_chunk(&mut buf).unwrap() {
                None => std::thread::sleep(Duration::from_millis(10)),
                Some(n) => {
                    got = Some(n);
                    break;
                }
            }
        }
        assert_eq!(got, Some(0), "EOF is a zero-length read");
        // The file is still open: closing the connection must send the Abort.
        assert!(c.spool_open);
        assert_eq!(kinds(&jobs.0), "open write ");
    }
}
