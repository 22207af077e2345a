//! The daemon's event loop: one mio thread that accepts connections, moves bytes between
//! sockets and [`crate::smtp::Session`]s, runs the timers, and reacts to signals. Disk I/O
//! runs on the spool worker ([`spool_worker`]), delivery on the
//! [`crate::deliver::DeliveryThread`], and SIGHUP's re-reading of the configuration (file
//! I/O, and a DNS lookup for a legacy `smtphost` name) on a reload thread; they only ever
//! talk to the loop through channels and a [`mio::Waker`], so nothing here blocks.
//!
//! Loop rules (mio's `Poll` documentation): every readiness event is drained until
//! `WouldBlock` (over several turns, see below), `Interrupted` is retried, spurious events are
//! harmless (every handler just tries and stops at `WouldBlock`), and WRITABLE interest is
//! registered only while replies are pending. A connection whose socket we stop reading (backpressure) is driven again
//! explicitly when the reason goes away, since edge-triggered readiness will not repeat.
//!
//! Fairness: one call may not monopolise the loop. A connection is read for at most
//! [`DRIVE_BUDGET`] bytes and a listener accepts at most [`ACCEPT_BUDGET`] connections per
//! turn; whatever stops on its budget (its socket possibly still readable) goes on a ready
//! list, and the loop polls with a zero timeout and drives the list again. Edge-triggered
//! readiness will not report the unread data a second time, so nothing is ever dropped from
//! that list without having been driven. A client pipelining commands as fast as it can
//! thus shares the loop with everyone else, and a new client's greeting is not delayed.

pub mod listen;

mod conn;
mod spool_worker;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use nix::errno::Errno;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::config::{Cidr, Config, ConfigError};
use crate::deliver::DeliveryThread;
use crate::smtp::{replies, Session, SessionConfig};
use crate::spool::Spool;

use conn::{Conn, JobSink, Reason, READ_CHUNK};
use spool_worker::{Done, Job, SpoolWorker};

/// Longest command line (CRLF included) a session accepts; longer lines get `500 5.5.2`.
/// RFC 5321 asks for 512; Postfix allows 2048, which SMTPUTF8 addresses and long ESMTP
/// parameter lists can need.
pub const MAX_LINE_LENGTH: usize = 2048;
/// How long a connection we decided to close may take to read its last reply.
pub(crate) const LINGER: Duration = Duration::from_secs(5);
/// How long after SIGTERM sessions in flight may still finish.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long accepting stays paused after EMFILE/ENFILE when no connection closes sooner.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);
/// How often reaching `max_connections` is logged at most.
const LIMIT_WARNING_INTERVAL: Duration = Duration::from_secs(60);
/// Bytes one `drive` call may read from a connection before it yields to the others.
const DRIVE_BUDGET: usize = 4 * READ_CHUNK;
/// Connections one `accept` call may take from a listener before it yields to the others.
const ACCEPT_BUDGET: usize = 64;

const WAKER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
/// Listener tokens are `LISTENER_BASE + index`; connection tokens count up from 0 and never
/// reach this, so a stale event for a closed connection can never hit a listener.
const LISTENER_BASE: usize = usize::MAX / 2;

/// Why the event loop could not run.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerError {
    /// Occurs when the poller, the waker, the signal pipe or a worker thread cannot be set
    /// up, or polling fails for good.
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::Io { what, .. } => write!(f, "event loop: cannot {what}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Io { source, .. } => Some(source),
        }
    }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ServerError {
    move |source| ServerError::Io { what, source }
}

/// What the loop needs to run; everything privileged was done before.
pub struct Options {
    /// The effective configuration.
    pub config: Config,
    /// Bound (or inherited) listening sockets, non-blocking.
    pub listeners: Vec<std::net::TcpListener>,
    /// The running delivery thread, nudged after every commit and stopped at exit.
    pub delivery: DeliveryThread,
    /// Re-reads the configuration on SIGHUP. It runs on a thread of its own, since reading
    /// a file (and resolving a legacy `smtphost` name) may block.
    pub reload: Box<dyn FnMut() -> Result<Config, ConfigError> + Send>,
    /// How long sessions in flight may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// The listeners are systemd's (socket activation): they outlive this process, so on
    /// SIGTERM what waits in their queues is left to the next instance, not turned away.
    pub inherited: bool,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("listeners", &self.listeners)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

/// The settings that shape new sessions; replaced on SIGHUP.
#[derive(Debug, Clone)]
struct Limits {
    session: SessionConfig,
    max_connections: usize,
    idle_timeout: Duration,
    session_timeout: Duration,
    allowed_clients: Vec<Cidr>,
}

impl Limits {
    fn from_config(c: &Config) -> Limits {
        Limits {
            session: session_config(c),
            max_connections: c.max_connections,
            idle_timeout: c.idle_timeout,
            session_timeout: c.session_timeout,
            allowed_clients: c.allowed_clients.clone(),
        }
    }
}

/// The SMTP engine's settings derived from the configuration.
pub fn session_config(c: &Config) -> SessionConfig {
    SessionConfig {
        hostname: c.hostname.clone(),
        banner: c.greeting(),
        max_message_size: c.max_message_size,
        max_recipients: c.max_recipients,
        max_line_length: MAX_LINE_LENGTH,
    }
}

/// Whether `ip` may connect: IPv4-mapped IPv6 peers are matched as IPv4 by [`Cidr`].
pub fn is_allowed(allowed: &[Cidr], ip: IpAddr) -> bool {
    allowed.iter().any(|c| c.contains(ip))
}

/// Jobs for the worker, with local answers when the worker is gone.
struct Jobs<'a> {
    worker: &'a SpoolWorker,
    local: &'a mut VecDeque<Done>,
}

impl JobSink for Jobs<'_> {
    fn submit(&mut self, job: Job) {
        if let Err(job) = self.worker.send(job) {
            match job {
                Job::Write { conn, data } => self.local.push_back(Done::Written {
                    conn,
                    bytes: data.len(),
                }),
                Job::Commit { conn } => self.local.push_back(Done::Committed {
                    conn,
                    result: Err("spool worker is not running".to_owned()),
                }),
                Job::Open { .. } | Job::Abort { .. } => {}
            }
        }
    }
}

/// The loop's end of the reload thread, which runs [`Options::reload`] off the loop.
struct Reloader {
    /// One `()` per reload wanted; dropping it ends the thread.
    requests: mpsc::Sender<()>,
    /// The parsed configurations (or errors), each followed by a wake-up.
    results: mpsc::Receiver<Result<Config, ConfigError>>,
    /// A reload is running: a SIGHUP meanwhile only sets `again`, so requests never pile
    /// up however often the signal comes.
    busy: bool,
    /// Another SIGHUP came while busy: re-read once more when the running one is done, so
    /// the last edit of the file is the one that applies.
    again: bool,
}

impl Reloader {
    fn spawn(
        mut reload: Box<dyn FnMut() -> Result<Config, ConfigError> + Send>,
        waker: Arc<Waker>,
    ) -> io::Result<Reloader> {
        let (requests, todo) = mpsc::channel::<()>();
        let (done, results) = mpsc::channel();
        std::thread::Builder::new()
            .name("reload".to_owned())
            .spawn(move || {
                // Ends when the loop drops its sender (the daemon stops); it is not joined,
                // since a lookup in progress must not hold up the exit.
                while todo.recv().is_ok() {
                    if done.send(reload()).is_err() {
                        return;
                    }
                    if let Err(e) = waker.wake() {
                        log::error!("reload: cannot wake the event loop: {e}");
                    }
                }
            })?;
        Ok(Reloader {
            requests,
            results,
            busy: false,
            again: false,
        })
    }

    /// Asks for a reload (SIGHUP).
    fn request(&mut self) {
        if self.busy {
            self.again = true;
            return;
        }
        if self.requests.send(()).is_err() {
            log::error!("reload failed, keeping the old configuration: reload thread is gone");
            return;
        }
        self.busy = true;
    }

    /// A finished reload, if any; starts the one a SIGHUP asked for meanwhile.
    fn finished(&mut self) -> Option<Result<Config, ConfigError>> {
        let result = self.results.try_recv().ok()?;
        self.busy = false;
        if std::mem::take(&mut self.again) {
            self.request();
        }
        Some(result)
    }
}

/// The loop's state.
struct Server {
    poll: Poll,
    listeners: Vec<TcpListener>,
    /// Whether listeners are registered (not paused after EMFILE).
    accepting: bool,
    accept_retry: Option<Instant>,
    /// Not accepting because `max_connections` sessions are open.
    held_at_limit: bool,
    /// When reaching `max_connections` was last logged.
    limit_warned: Option<Instant>,
    /// The listeners are systemd's and outlive us (see [`Options::inherited`]).
    inherited: bool,
    /// Which listener `resume_accepting` tries first: the one after the last to accept.
    first_listener: usize,
    conns: HashMap<usize, Conn>,
    next_token: usize,
    next_conn_id: u64,
    timers: BTreeSet<(Instant, usize)>,
    worker: SpoolWorker,
    local_done: VecDeque<Done>,
    delivery: DeliveryThread,
    signals: Signals,
    config: Config,
    limits: Limits,
    reload: Reloader,
    grace: Duration,
    /// Set by SIGTERM/SIGINT: when the grace period ends.
    shutdown_at: Option<Instant>,
    /// Set when the grace period is over and the remaining sessions got 421.
    shutdown_forced: bool,
    scratch: Vec<u8>,
    /// Connections that stopped on their [`DRIVE_BUDGET`] with input possibly unread; driven
    /// again next turn (oldest token first).
    ready: BTreeSet<usize>,
    /// Listeners (by index) that stopped on their [`ACCEPT_BUDGET`]; accepted from next turn.
    ready_listeners: BTreeSet<usize>,
}

/// Runs the daemon until SIGTERM/SIGINT: returns after the sessions in flight finished (or
/// the grace period ran out), the spool worker stopped and the delivery thread stopped.
pub fn serve(options: Options) -> Result<(), ServerError> {
    let Options {
        config,
        listeners,
        delivery,
        reload,
        shutdown_grace,
        inherited,
    } = options;
    let poll = Poll::new().map_err(io_err("create the poller"))?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_err("create the waker"))?);
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(io_err("catch signals"))?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(io_err("register signals"))?;
    let mut mio_listeners = Vec::with_capacity(listeners.len());
    for (i, l) in listeners.into_iter().enumerate() {
        l.set_nonblocking(true)
            .map_err(io_err("make a listener non-blocking"))?;
        let mut l = TcpListener::from_std(l);
        poll.registry()
            .register(&mut l, Token(LISTENER_BASE + i), Interest::READABLE)
            .map_err(io_err("register a listener"))?;
        if let Ok(addr) = l.local_addr() {
            log::info!("listening on {addr}");
        }
        mio_listeners.push(l);
    }
    let reload =
        Reloader::spawn(reload, waker.clone()).map_err(io_err("start the reload thread"))?;
    let worker = SpoolWorker::spawn(
        Spool::new(config.spool_dir.clone()),
        config.spool_sync,
        waker,
        delivery.spares(),
    )
    .map_err(io_err("start the spool worker"))?;
    let mut server = Server {
        poll,
        listeners: mio_listeners,
        accepting: true,
        accept_retry: None,
        held_at_limit: false,
        limit_warned: None,
        inherited,
        first_listener: 0,
        conns: HashMap::new(),
        next_token: 0,
        next_conn_id: 1,
        timers: BTreeSet::new(),
        worker,
        local_done: VecDeque::new(),
        delivery,
        signals,
        limits: Limits::from_config(&config),
        config,
        reload,
        grace: shutdown_grace,
        shutdown_at: None,
        shutdown_forced: false,
        scratch: vec![0; READ_CHUNK],
        ready: BTreeSet::new(),
        ready_listeners: BTreeSet::new(),
    };
    let result = server.run();
    let Server {
        worker, delivery, ..
    } = server;
    worker.shutdown(LINGER);
    delivery.shutdown(LINGER);
    log::info!("stopped");
    result
}

impl Server {
    fn run(&mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(256);
        log::info!("ready");
        loop {
            let timeout = self.next_timeout(Instant::now());
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("poll")(e)),
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {
                        self.handle_worker_results();
                        self.handle_reloads();
                    }
                    SIGNALS => self.handle_signals(),
                    Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE),
                    Token(t) => self.drive(t),
                }
            }
            // Results can also arrive without a wake-up having been seen yet, and answers
            // made locally when the worker is gone need processing too.
            self.handle_worker_results();
            self.drive_ready();
            let now = Instant::now();
            self.fire_timers(now);
            if let Some(at) = self.accept_retry {
                if now >= at {
                    self.resume_accepting();
                }
            }
            if let Some(at) = self.shutdown_at {
                if now >= at && !self.shutdown_forced {
                    self.force_shutdown(now);
                }
                if self.conns.is_empty() {
                    return Ok(());
                }
                if now >= at + LINGER * 2 {
                    log::warn!(
                        "{} connections still open after the grace period; exiting",
                        self.conns.len()
                    );
                    return Ok(());
                }
            }
        }
    }

    /// How long `poll` may sleep: until the earliest timer.
    fn next_timeout(&self, now: Instant) -> Option<Duration> {
        let mut next: Option<Instant> = self.timers.first().map(|(t, _)| *t);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(self.accept_retry);
        if let Some(at) = self.shutdown_at {
            consider(Some(if self.shutdown_forced {
                at + LINGER * 2
            } else {
                at
            }));
        }
        if !self.local_done.is_empty() || !self.ready.is_empty() || !self.ready_listeners.is_empty()
        {
            return Some(Duration::ZERO);
        }
        next.map(|t| t.saturating_duration_since(now))
    }

    /// Gives every connection and listener that stopped on its budget its next turn. Each
    /// is taken off the list before it is driven, and put back by `drive`/`accept` if it
    /// stops on its budget again, so the list only ever holds work still to do.
    fn drive_ready(&mut self) {
        for index in std::mem::take(&mut self.ready_listeners) {
            self.accept(index);
        }
        for token in std::mem::take(&mut self.ready) {
            self.drive(token);
        }
    }

    // ---- accepting ----------------------------------------------------------------------

    fn accept(&mut self, index: usize) {
        let mut budget = ACCEPT_BUDGET;
        loop {
            if !self.accepting {
                return;
            }
            if self.conns.len() >= self.limits.max_connections && self.shutdown_at.is_none() {
                self.hold_at_limit();
                return;
            }
            if budget == 0 {
                // More may be waiting, and no new event will say so: come back next turn.
                self.ready_listeners.insert(index);
                return;
            }
            budget -= 1;
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.first_listener = index + 1;
                    self.admit(stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => match e.raw_os_error().map(Errno::from_raw) {
                    // The client gave up before we accepted: nothing to do.
                    Some(Errno::ECONNABORTED) | Some(Errno::EPROTO) => continue,
                    Some(Errno::EMFILE) | Some(Errno::ENFILE) | Some(Errno::ENOBUFS)
                    | Some(Errno::ENOMEM) => {
                        log::warn!(
                            "accept: {e}; pausing new connections until one closes ({} open)",
                            self.conns.len()
                        );
                        self.pause_accepting();
                        return;
                    }
                    _ => {
                        log::error!("accept: {e}");
                        return;
                    }
                },
            }
        }
    }

    /// `max_connections` sessions are open: newcomers wait in the kernel's listen queue
    /// until one ends, as with Postfix (whose master stops accepting at its process limit),
    /// instead of being turned away: a burst of scripts sending at once is served late, not
    /// lost. Closing a connection resumes accepting.
    fn hold_at_limit(&mut self) {
        let now = Instant::now();
        // Under a sustained load every session that ends lets one in and the limit is met
        // again: one warning a minute says it.
        if self
            .limit_warned
            .is_none_or(|at| now.duration_since(at) >= LIMIT_WARNING_INTERVAL)
        {
            log::warn!(
                "max_connections ({}) reached: new clients wait until a session ends",
                self.limits.max_connections
            );
            self.limit_warned = Some(now);
        }
        self.held_at_limit = true;
        self.stop_listening();
    }

    fn pause_accepting(&mut self) {
        self.stop_listening();
        self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
    }

    /// Shutting down on systemd's sockets: whoever waits in their queues is greeted by the
    /// next instance (systemd starts it on the next connection, or the restart does), not
    /// answered 421 by this one.
    fn leaving_queue_to_successor(&self) -> bool {
        self.inherited && self.shutdown_at.is_some()
    }

    fn stop_listening(&mut self) {
        if self.accepting {
            for l in &mut self.listeners {
                if let Err(e) = self.poll.registry().deregister(l) {
                    log::error!("cannot pause a listener: {e}");
                }
            }
            self.accepting = false;
        }
    }

    fn resume_accepting(&mut self) {
        self.accept_retry = None;
        self.held_at_limit = false;
        if self.accepting || self.leaving_queue_to_successor() {
            return;
        }
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if let Err(e) =
                self.poll
                    .registry()
                    .register(l, Token(LISTENER_BASE + i), Interest::READABLE)
            {
                log::error!("cannot resume a listener: {e}");
            }
        }
        self.accepting = true;
        // Connections may have queued while we were not listening; registering reports
        // them, but trying at once costs nothing and does not depend on that. Held at
        // max_connections, each closed session frees one slot: the listener after the one
        // that took the last slot is tried first, so a client on [::1] does not wait behind
        // a stream on 127.0.0.1.
        let n = self.listeners.len();
        let first = self.first_listener % n.max(1);
        for k in 0..n {
            self.accept((first + k) % n);
        }
    }

    /// A connection was accepted: refuse it with a canned reply, or start a session.
    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        // A dual-stack `[::]` socket (one handed over by systemd) reports IPv4 clients as
        // `::ffff:a.b.c.d`. `allowed_clients` already matches them as IPv4; the log lines
        // and the envelope must name them the same way, so grep and the digest agree.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        let refusal = if !is_allowed(&self.limits.allowed_clients, peer.ip()) {
            Some((replies::NOT_ALLOWED, "not allowed"))
        } else if self.shutdown_at.is_some() {
            Some((replies::SHUTTING_DOWN, "shutting down"))
        } else {
            None
        };
        if let Some((reply, reason)) = refusal {
            log::info!("conn={id} reject from {} reason={reason}", peer.ip());
            // A fresh socket's send buffer is empty, so this short write completes; if it
            // does not, the client learns the same from the closed connection.
            let _ = io::Write::write(&mut stream, reply.as_bytes());
            let _ = stream.shutdown(std::net::Shutdown::Write);
            return;
        }
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("conn={id} TCP_NODELAY: {e}");
        }
        let token = self.next_token;
        self.next_token += 1;
        let now = Instant::now();
        let mut conn = Conn::new(
            id,
            stream,
            peer,
            Session::new(self.limits.session.clone()),
            now,
            self.limits.idle_timeout,
            self.limits.session_timeout,
        );
        // The session's own lines (refusals, traces) carry the ID the server's lines do.
        conn.session.set_log_id(&format!("conn={id}"));
        conn.session.greeting(&mut conn.out);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut conn.stream, Token(token), Interest::READABLE)
        {
            log::error!("conn={id} cannot register: {e}");
            return;
        }
        log::info!("conn={id} connect from {}", peer.ip());
        self.conns.insert(token, conn);
        self.drive(token);
    }

    // ---- connections --------------------------------------------------------------------

    /// Does everything a connection can do now: feed buffered input, write replies, read
    /// and feed new input until WouldBlock, backpressure or its [`DRIVE_BUDGET`], then close it or update its
    /// interest and timer.
    fn drive(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return; // a stale event for a closed connection
        };
        let mut jobs = Jobs {
            worker: &self.worker,
            local: &mut self.local_done,
        };
        let now = Instant::now();
        let mut broken = None;
        let mut read = 0;
        loop {
            conn.feed_buffered(token, &mut jobs, now);
            if let Err(e) = conn.flush_output() {
                broken = Some(e);
                break;
            }
            if conn.closing.is_some() && conn.out.is_empty() {
                break;
            }
            if conn.peer_eof
                && conn.closing.is_none()
                && conn.inbuf.is_empty()
                && !conn.session.is_waiting()
            {
                conn.close_after_flush(Reason::Eof, now, LINGER);
                continue;
            }
            if !conn.can_read() {
                break;
            }
            if read >= DRIVE_BUDGET {
                // The socket may still hold input, and edge-triggered readiness will not
                // report it again: the ready list brings us back after the others had a turn.
                self.ready.insert(token);
                break;
            }
            match conn.read_chunk(&mut self.scratch) {
                Ok(None) => break,
                Ok(Some(0)) => conn.peer_eof = true,
                Ok(Some(n)) => {
                    read += n;
                    conn.idle_deadline = now + conn.idle_timeout;
                    conn.feed_fresh(token, &self.scratch[..n], &mut jobs, now);
                }
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = broken {
            log::debug!("conn={} socket error: {e}", conn.id);
            conn.closing.get_or_insert(Reason::Error);
            self.close(token);
            return;
        }
        if conn.closing.is_some() && conn.out.is_empty() {
            self.close(token);
            return;
        }
        // WRITABLE only while replies wait, so an idle connection causes no wake-ups.
        let want_write = !conn.out.is_empty();
        if want_write != conn.writable {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) =
                self.poll
                    .registry()
                    .reregister(&mut conn.stream, Token(token), interest)
            {
                log::error!("conn={} cannot reregister: {e}", conn.id);
                conn.closing.get_or_insert(Reason::Error);
                self.close(token);
                return;
            }
            conn.writable = want_write;
        }
        let key = conn.deadline();
        if conn.timer_key != Some(key) {
            if let Some(old) = conn.timer_key {
                self.timers.remove(&(old, token));
            }
            self.timers.insert((key, token));
            conn.timer_key = Some(key);
        }
    }

    /// Removes a connection: aborts its unfinished message, logs, and lets a paused
    /// listener accept again.
    fn close(&mut self, token: usize) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        if let Some(key) = conn.timer_key {
            self.timers.remove(&(key, token));
        }
        if conn.spool_open {
            let mut jobs = Jobs {
                worker: &self.worker,
                local: &mut self.local_done,
            };
            jobs.submit(Job::Abort { conn: token });
            log::info!("conn={} message aborted: connection closed", conn.id);
        }
        if let Err(e) = self.poll.registry().deregister(&mut conn.stream) {
            log::debug!("conn={} deregister: {e}", conn.id);
        }
        let reason = conn.closing.unwrap_or(Reason::Error);
        log::info!(
            "conn={} disconnect from {} reason={}",
            conn.id,
            conn.peer.ip(),
            reason.as_str()
        );
        drop(conn);
        if !self.accepting {
            self.resume_accepting();
        }
    }

    /// Results from the spool worker: acknowledgements release backpressure, commits get
    /// their 250 or 452 and nudge delivery.
    fn handle_worker_results(&mut self) {
        let mut committed_any = false;
        let mut touched = Vec::new();
        while let Some(done) = self
            .local_done
            .pop_front()
            .or_else(|| self.worker.try_recv())
        {
            match done {
                Done::Written { conn, bytes } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.in_flight = c.in_flight.saturating_sub(bytes);
                        touched.push(conn);
                    }
                }
                Done::Committed { conn, result } => {
                    let c = self.conns.get_mut(&conn);
                    match &result {
                        Ok(m) => {
                            committed_any = true;
                            log::info!(
                                "{}: conn={} from=<{}>, size={}, nrcpt={}",
                                m.id,
                                c.as_ref().map_or(0, |c| c.id),
                                m.sender,
                                m.size,
                                m.nrcpt
                            );
                        }
                        Err(reason) => log::warn!(
                            "conn={} message not queued: {reason}",
                            c.as_ref().map_or(0, |c| c.id)
                        ),
                    }
                    if let Some(c) = c {
                        c.commit_pending = false;
                        let answer = match &result {
                            Ok(m) => Ok(m.id.0.as_str()),
                            Err(r) => Err(r.as_str()),
                        };
                        c.session.committed(answer, &mut c.out);
                        if self.shutdown_forced {
                            c.out.extend_from_slice(replies::SHUTTING_DOWN.as_bytes());
                            c.close_after_flush(Reason::Shutdown, Instant::now(), LINGER);
                        }
                        touched.push(conn);
                    }
                }
            }
        }
        if committed_any {
            self.delivery.nudge();
        }
        // A dead worker leaves waiting sessions without an answer: give them their 452.
        if self.worker.is_gone() {
            let waiting: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| c.commit_pending || c.in_flight > 0)
                .map(|(t, _)| *t)
                .collect();
            if !waiting.is_empty() {
                log::error!("spool worker stopped; failing {} sessions", waiting.len());
            }
            for t in waiting {
                if let Some(c) = self.conns.get_mut(&t) {
                    c.in_flight = 0;
                    if c.commit_pending {
                        c.commit_pending = false;
                        c.session
                            .committed(Err("spool worker is not running"), &mut c.out);
                    }
                    touched.push(t);
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for t in touched {
            self.drive(t);
        }
    }

    /// Idle and session timeouts, and closing connections that did not read their reply.
    fn fire_timers(&mut self, now: Instant) {
        while let Some(&(at, token)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, token));
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            // The entry is gone; `drive` inserts the fresh one.
            conn.timer_key = None;
            if conn.linger_deadline.is_some_and(|l| l <= now) {
                log::info!("conn={} last reply not taken within {LINGER:?}", conn.id);
                self.close(token);
                continue;
            }
            if conn.closing.is_none() {
                if conn.commit_pending {
                    // The session waits for our commit, so the delay is ours, not the
                    // client's; and a 421 now would precede the 250 still owed. Look again
                    // shortly.
                    conn.idle_deadline = conn.idle_deadline.max(now + conn.idle_timeout);
                    conn.session_deadline = conn.session_deadline.max(now + LINGER);
                } else if now >= conn.session_deadline {
                    conn.out
                        .extend_from_slice(replies::SESSION_TIMEOUT.as_bytes());
                    conn.close_after_flush(Reason::SessionTimeout, now, LINGER);
                } else if now >= conn.idle_deadline {
                    if conn.in_flight > 0 {
                        // Reading is paused for the spool worker: we are the slow side.
                        conn.idle_deadline = now + conn.idle_timeout;
                    } else {
                        conn.out.extend_from_slice(replies::IDLE_TIMEOUT.as_bytes());
                        conn.close_after_flush(Reason::IdleTimeout, now, LINGER);
                    }
                }
            }
            self.drive(token);
        }
    }

    // ---- signals ------------------------------------------------------------------------

    fn handle_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for signal in pending {
            match signal {
                SIGHUP => self.reload.request(),
                SIGTERM | SIGINT => self.begin_shutdown(signal),
                _ => {}
            }
        }
    }

    fn begin_shutdown(&mut self, signal: i32) {
        let now = Instant::now();
        match self.shutdown_at {
            None => {
                log::info!(
                    "signal {signal}: shutting down, {} sessions may finish within {:?}",
                    self.conns.len(),
                    self.grace
                );
                self.shutdown_at = Some(now + self.grace);
                if self.inherited {
                    // The sockets are systemd's: new and waiting clients stay in their
                    // queues for the next instance.
                    self.stop_listening();
                } else {
                    // Our own sockets close at exit, which would reset whoever waits at
                    // max_connections: they are told 421 at once instead.
                    self.resume_accepting();
                }
            }
            Some(_) => {
                log::info!("signal {signal} again: ending the remaining sessions now");
                self.shutdown_at = Some(now);
            }
        }
    }

    /// The grace period is over: 421 to every session still open (the ones waiting for a
    /// commit get it right after their 250/452, so nothing they were told is undone).
    fn force_shutdown(&mut self, now: Instant) {
        self.shutdown_forced = true;
        let tokens: Vec<usize> = self.conns.keys().copied().collect();
        for t in tokens {
            if let Some(c) = self.conns.get_mut(&t) {
                if c.closing.is_none() && !c.commit_pending {
                    c.out.extend_from_slice(replies::SHUTTING_DOWN.as_bytes());
                    c.close_after_flush(Reason::Shutdown, now, LINGER);
                }
            }
            self.drive(t);
        }
    }

    /// Applies a configuration the reload thread has read, if one is ready.
    fn handle_reloads(&mut self) {
        while let Some(result) = self.reload.finished() {
            self.apply_reload(result);
        }
    }

    fn apply_reload(&mut self, result: Result<Config, ConfigError>) {
        match result {
            Ok(new) => {
                if new.listen != self.config.listen {
                    log::warn!("reload: listen addresses changed; restart to apply");
                }
                if new.username != self.config.username || new.group != self.config.group {
                    log::warn!("reload: username/group changed; restart to apply");
                }
                if new.spool_dir != self.config.spool_dir {
                    log::warn!("reload: spool_dir changed; restart to apply");
                }
                let mut effective = new;
                // What cannot change without a restart keeps its running value, so the
                // delivery thread keeps draining the spool the daemon writes to.
                effective.listen = self.config.listen.clone();
                effective.username = self.config.username.clone();
                effective.group = self.config.group.clone();
                effective.spool_dir = self.config.spool_dir.clone();
                crate::logging::set_level(effective.loglevel);
                self.limits = Limits::from_config(&effective);
                if self.held_at_limit {
                    // A raised limit lets waiting clients in now; resuming at an unchanged
                    // one just holds again.
                    self.resume_accepting();
                }
                self.worker.set_sync(effective.spool_sync);
                self.delivery.reload(effective.clone());
                self.config = effective;
                log::info!("reloaded configuration");
            }
            Err(e) => log::error!("reload failed, keeping the old configuration: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (bounded) for the reload thread to hand back a result.
    fn finished(r: &mut Reloader) -> Option<Result<Config, ConfigError>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(result) = r.finished() {
                return Some(result);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    #[test]
    fn sighups_during_a_reload_coalesce_into_one_more() {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
        // Each reload waits for the test to let it finish, like a slow resolver.
        let (gate, gate_rx) = mpsc::channel::<u16>();
        let mut r = Reloader::spawn(
            Box::new(move || {
                let n = gate_rx.recv().unwrap_or(0);
                Ok(Config {
                    max_recipients: usize::from(n),
                    ..Config::default()
                })
            }),
            waker,
        )
        .unwrap();
        r.request();
        r.request();
        r.request();
        assert!(r.finished().is_none(), "nothing finished yet");
        gate.send(1).unwrap();
        let first = finished(&mut r).expect("first reload").unwrap();
        assert_eq!(first.max_recipients, 1);
        // The two SIGHUPs during the first reload made exactly one more.
        gate.send(2).unwrap();
        let second = finished(&mut r).expect("second reload").unwrap();
        assert_eq!(second.max_recipients, 2);
        gate.send(3).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(r.finished().is_none(), "no third reload was asked for");
        assert!(!r.busy);
    }
}
