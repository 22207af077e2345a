//! The SMTP protocol engine (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
//! ENHANCEDSTATUSCODES and CHUNKING): bytes in, replies and events out, no I/O, no clock.
//!
//! The daemon's event loop (`server`) and `sendmail -bs` ([`stdio`]) drive the same
//! [`Session`]; neither knows the protocol, and the engine knows nothing of sockets, clocks or
//! files.
//!
//! Driving a session:
//!
//! 1. [`Session::greeting`] writes the `220` banner into the output buffer.
//! 2. For every chunk of input, call [`Session::feed`] repeatedly with the unconsumed rest
//!    until it returns [`Event::NeedInput`] (everything consumed or buffered) or
//!    [`Event::Waiting`]. Replies are appended to `out`, in order (pipelining).
//! 3. [`Event::MessageStart`]: open a spool file for that transaction. [`Event::Data`]: append
//!    the bytes (already dot-unstuffed; line ends as received). [`Event::MessageEnd`]: commit
//!    the file; the session is now waiting — it consumes no input ([`Event::Waiting`]) until
//!    the host calls [`Session::committed`], which writes `250 2.0.0 Ok: queued as <ID>` or
//!    `452 4.3.1`. [`Event::MessageAbort`]: discard the file (too large, RSET, BDAT error).
//! 4. [`Event::Close`]: flush `out`, then close the connection.
//!
//! Limits, and the answer to each: a command line longer than `max_line_length` gets
//! `500 5.5.2 Line too long` and the rest of it is discarded (at most `max_line_length - 1`
//! bytes of a partial line are ever held); a message over `max_message_size` is aborted the
//! moment it crosses the limit ([`Event::MessageAbort`]), the rest is read and dropped, and
//! the end of its data gets `552 5.3.4`; recipients beyond `max_recipients` get `452 4.5.3`.
//! Message data is never buffered: [`Event::Data`] borrows the caller's input.
//!
//! Leniency is Postfix's for local clients: no HELO/EHLO needed before MAIL, bare LF line
//! ends (also `LF.LF` ends DATA), 8-bit data without `BODY=8BITMIME`, unqualified addresses
//! (`root`), `MAIL FROM: <x>`. Addresses must be valid UTF-8 (see `parser`).
//!
//! Structure: one `State` enum whose variants hold only what is valid in them (there is no
//! way to hold recipients without a sender); every command is checked first (sequence,
//! limits), then acted on; every change of variant goes through `Session::enter`, which traces
//! it at debug level; every reply is a named constant in `reply`.

mod data;
mod parser;
mod reply;
pub mod stdio;

use std::fmt::Write as _;
use std::mem;

use data::{DataReceiver, DataStep};
use parser::{Body, Command, MailParams, NonSmtp, ParseError};

/// Limits and names for one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our name in the greeting and the EHLO reply.
    pub hostname: String,
    /// The greeting's text after `220 ` (already expanded, see `Config::greeting`); empty
    /// for `<hostname> ESMTP`.
    pub banner: String,
    /// SIZE limit in bytes: a larger `SIZE=` is refused at MAIL, a larger message at the end
    /// of its data, with `552 5.3.4`.
    pub max_message_size: u64,
    /// Recipients per message; beyond it `452 4.5.3`.
    pub max_recipients: usize,
    /// Longest command line accepted (bytes, CRLF included); beyond it `500 5.5.2`.
    pub max_line_length: usize,
}

/// One mail transaction, complete when DATA or BDAT begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The HELO/EHLO name (empty when the client sent none).
    pub helo: String,
    /// The reverse path; empty for the null sender `<>`.
    pub sender: String,
    /// The forward paths, in order.
    pub recipients: Vec<String>,
}

/// What the host must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// All input given was consumed (or buffered); read more.
    NeedInput,
    /// A message begins: open a spool file for it.
    MessageStart(Transaction),
    /// Message bytes to append to the open spool file. Usually a slice of the input given to
    /// [`Session::feed`]; never empty.
    Data(&'a [u8]),
    /// The message is complete: commit it, then call [`Session::committed`].
    MessageEnd,
    /// Discard the open spool file; no [`Event::MessageEnd`] follows for this message. Causes:
    /// the message grew past `max_message_size`; RSET, HELO/EHLO, QUIT or a malformed BDAT
    /// between BDAT chunks. The reply has been written, except for an oversized message: its
    /// `552 5.3.4` comes once the rest of its data has been read (and dropped).
    MessageAbort,
    /// Waiting for [`Session::committed`]; no input is consumed meanwhile.
    Waiting,
    /// Flush the output, then close the connection.
    Close,
}

/// Canned replies the host sends without a session's help.
pub mod replies {
    /// The client's address is not in `allowed_clients`.
    pub const NOT_ALLOWED: &str = "554 5.7.1 Access denied\r\n";
    /// The daemon is shutting down.
    pub const SHUTTING_DOWN: &str =
        "421 4.3.2 Service shutting down, closing transmission channel\r\n";
    /// No command for `idle_timeout`.
    pub const IDLE_TIMEOUT: &str = "421 4.4.2 Timeout exceeded, closing transmission channel\r\n";
    /// The session lasted longer than `session_timeout`.
    pub const SESSION_TIMEOUT: &str =
        "421 4.4.2 Session lasted too long, closing transmission channel\r\n";
}

/// A mail transaction being built: MAIL was accepted, recipients may still be empty.
#[derive(Debug, Default)]
struct Pending {
    sender: String,
    recipients: Vec<String>,
    body: Body,
    /// Whether a recipient over `max_recipients` was refused (and logged, once).
    over_limit: bool,
}

/// How much of the current message has been handed out, and whether it was given up.
#[derive(Debug, Default)]
struct Intake {
    /// Bytes handed out as [`Event::Data`].
    size: u64,
    /// The message crossed `max_message_size`: [`Event::MessageAbort`] was emitted and the
    /// rest of its bytes are dropped.
    aborted: bool,
}

impl Intake {
    /// Accounts for `bytes` of message data and says what the host must do with them.
    fn take<'a>(&mut self, bytes: &'a [u8], max: u64) -> Progress<'a> {
        if self.aborted {
            return Progress::Continue;
        }
        let size = self.size.saturating_add(bytes.len() as u64);
        if size > max {
            self.aborted = true;
            Progress::Emit(Event::MessageAbort)
        } else {
            self.size = size;
            Progress::Emit(Event::Data(bytes))
        }
    }
}

/// A message arriving through DATA.
#[derive(Debug)]
struct DataBody {
    receiver: DataReceiver,
    intake: Intake,
}

/// A BDAT chunk arriving.
#[derive(Debug)]
struct Chunk {
    /// Octets of this chunk still to come.
    remaining: u64,
    /// The chunk's declared size, for the reply.
    declared: u64,
    /// `BDAT n LAST`.
    last: bool,
    /// The whole message so far, earlier chunks included.
    intake: Intake,
}

/// The protocol state; each variant holds only the data valid in it.
#[derive(Debug)]
enum State {
    /// Reading commands; no transaction.
    Idle,
    /// Reading commands; MAIL accepted.
    Mail(Pending),
    /// Reading a message sent with DATA.
    Data(DataBody),
    /// Reading the octets of a BDAT chunk of an open message.
    Chunk(Chunk),
    /// Reading commands between the BDAT chunks of an open message.
    Chunked {
        /// Message bytes so far.
        size: u64,
    },
    /// Reading and dropping the octets of a refused BDAT command: they were sent anyway
    /// (RFC 3030), and reading them as commands would desynchronise the session.
    Discard {
        /// Octets still to drop.
        remaining: u64,
        /// The transaction to return to afterwards, if one was open.
        resume: Option<Pending>,
    },
    /// The message was handed to the host; waiting for [`Session::committed`].
    Waiting,
    /// QUIT was answered.
    Closed,
}

impl State {
    /// The state's name in trace lines.
    fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Mail(_) => "mail",
            State::Data(_) => "data",
            State::Chunk(_) => "bdat-chunk",
            State::Chunked { .. } => "bdat-between",
            State::Discard { .. } => "bdat-discard",
            State::Waiting => "waiting",
            State::Closed => "closed",
        }
    }
}

/// What one step of [`Session::feed`] achieved.
enum Progress<'a> {
    /// Return this event to the host.
    Emit(Event<'a>),
    /// Input was consumed or the state advanced; keep going.
    Continue,
    /// The DATA terminator was consumed.
    DataEnd {
        /// The message had been given up as too large.
        aborted: bool,
    },
    /// The last octet of a BDAT chunk was consumed.
    ChunkEnd {
        /// The chunk's declared size.
        declared: u64,
        /// It was the LAST chunk.
        last: bool,
        /// The message so far.
        intake: Intake,
    },
    /// The octets of a refused BDAT were dropped.
    DiscardEnd(Option<Pending>),
}

/// The state of one SMTP session.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    /// The hostname as it goes on the wire: printable ASCII only.
    hostname: String,
    /// The last HELO/EHLO name.
    helo: String,
    state: State,
    /// A partial command line; always shorter than `max_line_length`.
    line: Vec<u8>,
    /// The current command line went over `max_line_length` and was answered; its remaining
    /// bytes are dropped up to the next LF.
    discarding_line: bool,
    /// Put first in trace lines (the host's session or connection ID).
    log_id: String,
    /// Commands answered with a 5xx so far; at [`HARD_ERROR_LIMIT`] the session ends.
    errors: usize,
}

/// After this many commands answered with a permanent error, the session ends with `421`
/// (Postfix's `smtpd_hard_error_limit`): a client that is not speaking SMTP (an HTTP
/// request's headers, a confused script) is not kept talking.
pub const HARD_ERROR_LIMIT: usize = 20;

impl Session {
    /// A new session, before the greeting.
    ///
    /// Characters of `hostname` outside printable ASCII are left out of the replies (a name
    /// with a CR in it must not be able to forge a reply line).
    pub fn new(config: SessionConfig) -> Session {
        let mut hostname: String = config
            .hostname
            .chars()
            .filter(char::is_ascii_graphic)
            .collect();
        if hostname.is_empty() {
            hostname = "localhost".to_string();
        }
        Session {
            config,
            hostname,
            helo: String::new(),
            state: State::Idle,
            line: Vec::new(),
            discarding_line: false,
            log_id: "smtp".to_string(),
            errors: 0,
        }
    }

    /// Sets the ID that starts every trace line of this session (by default `smtp`).
    pub fn set_log_id(&mut self, id: &str) {
        self.log_id = id.to_string();
    }

    /// Writes the `220 <hostname> ESMTP` greeting, or `220 <banner>` when one is set
    /// (printable ASCII only: nothing in it can end the line early).
    pub fn greeting(&mut self, out: &mut Vec<u8>) {
        let banner: String = self
            .config
            .banner
            .chars()
            .filter(|c| *c == ' ' || c.is_ascii_graphic())
            .collect();
        if banner.trim().is_empty() {
            out.extend_from_slice(format!("220 {} ESMTP\r\n", self.hostname).as_bytes());
        } else {
            out.extend_from_slice(format!("220 {banner}\r\n").as_bytes());
        }
    }

    /// Processes input from its start; returns how many bytes were consumed and what to do.
    ///
    /// Every complete command line in `input` is answered, in order, before this returns
    /// [`Event::NeedInput`]; an incomplete last line is kept (bounded by `max_line_length`)
    /// and counted as consumed. Message data is never kept: it comes back as
    /// [`Event::Data`] slices of `input`.
    pub fn feed<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> (usize, Event<'a>) {
        let max = self.config.max_message_size;
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            let (used, progress) = match &mut self.state {
                State::Waiting => return (pos, Event::Waiting),
                State::Closed => return (pos, Event::Close),
                State::Data(body) => {
                    let (used, found) = body.receiver.step(rest);
                    let progress = match found {
                        DataStep::Data(bytes) => body.intake.take(bytes, max),
                        DataStep::End => Progress::DataEnd {
                            aborted: body.intake.aborted,
                        },
                        DataStep::NeedInput => Progress::Emit(Event::NeedInput),
                    };
                    (used, progress)
                }
                State::Chunk(chunk) => {
                    if chunk.remaining == 0 {
                        let intake = mem::take(&mut chunk.intake);
                        let progress = Progress::ChunkEnd {
                            declared: chunk.declared,
                            last: chunk.last,
                            intake,
                        };
                        (0, progress)
                    } else if rest.is_empty() {
                        (0, Progress::Emit(Event::NeedInput))
                    } else {
                        let used = chunk_len(chunk.remaining, rest.len());
                        chunk.remaining -= used as u64;
                        (used, chunk.intake.take(&rest[..used], max))
                    }
                }
                State::Discard { remaining, resume } => {
                    if *remaining == 0 {
                        (0, Progress::DiscardEnd(resume.take()))
                    } else if rest.is_empty() {
                        (0, Progress::Emit(Event::NeedInput))
                    } else {
                        let used = chunk_len(*remaining, rest.len());
                        *remaining -= used as u64;
                        (used, Progress::Continue)
                    }
                }
                State::Idle | State::Mail(_) | State::Chunked { .. } => self.read_line(rest, out),
            };
            pos += used;
            match progress {
                Progress::Emit(event) => return (pos, event),
                Progress::Continue => {}
                Progress::DataEnd { aborted: true } => {
                    self.reject("DATA", reply::TOO_BIG_DATA, out);
                    self.enter(State::Idle, "end-of-data");
                }
                Progress::DataEnd { aborted: false } => {
                    self.enter(State::Waiting, "end-of-data");
                    return (pos, Event::MessageEnd);
                }
                Progress::ChunkEnd {
                    declared,
                    last,
                    intake,
                } => {
                    if intake.aborted {
                        self.reject("BDAT", reply::TOO_BIG_DATA, out);
                        self.enter(State::Idle, "end-of-chunk");
                    } else if last {
                        self.enter(State::Waiting, "end-of-chunk");
                        return (pos, Event::MessageEnd);
                    } else {
                        let line = format!("{}{declared} bytes\r\n", reply::CHUNK_OK_PREFIX);
                        out.extend_from_slice(line.as_bytes());
                        self.enter(State::Chunked { size: intake.size }, "end-of-chunk");
                    }
                }
                Progress::DiscardEnd(resume) => {
                    let next = resume.map_or(State::Idle, State::Mail);
                    self.enter(next, "end-of-discard");
                }
            }
        }
    }

    /// The host's answer to [`Event::MessageEnd`]: `Ok(queue_id)` once the message is durable,
    /// `Err(reason)` when it could not be written (`452 4.3.1`, never 250).
    ///
    /// Ignored (and traced) when no message is awaited. Bytes of the queue ID outside
    /// printable ASCII are left out of the reply.
    pub fn committed(&mut self, result: Result<&str, &str>, out: &mut Vec<u8>) {
        if !self.is_waiting() {
            log::debug!(
                "{}: commit result ignored state={}",
                self.log_id,
                self.state.name()
            );
            return;
        }
        match result {
            Ok(id) => {
                let mut line = reply::QUEUED_PREFIX.to_string();
                line.extend(id.chars().filter(char::is_ascii_graphic));
                line.push_str("\r\n");
                out.extend_from_slice(line.as_bytes());
            }
            Err(reason) => {
                log::warn!(
                    "{}: reject: message not stored ({reason}): {}",
                    self.log_id,
                    reply::STORAGE_FAILED.trim_end()
                );
                out.extend_from_slice(reply::STORAGE_FAILED.as_bytes());
            }
        }
        self.enter(State::Idle, "commit");
    }

    /// Whether a committed message is awaited.
    pub fn is_waiting(&self) -> bool {
        matches!(self.state, State::Waiting)
    }

    /// Whether a message is being received (between MessageStart and MessageEnd/Abort), so a
    /// host that closes the connection knows to discard the spool file.
    pub fn in_message(&self) -> bool {
        match &self.state {
            State::Data(body) => !body.intake.aborted,
            State::Chunk(chunk) => !chunk.intake.aborted,
            State::Chunked { .. } => true,
            State::Idle
            | State::Mail(_)
            | State::Discard { .. }
            | State::Waiting
            | State::Closed => false,
        }
    }

    /// Bytes of a partial command line held inside the session; always less than
    /// `max_line_length`. (Message data is never held.)
    pub fn buffered(&self) -> usize {
        self.line.len()
    }

    /// Refuses a message (or the MAIL that announced it) and says so in the log, where a client
    /// that gives up on it leaves no other trace.
    fn reject(&self, command: &str, text: &str, out: &mut Vec<u8>) {
        log::info!("{}: reject: {command}: {}", self.log_id, text.trim_end());
        out.extend_from_slice(text.as_bytes());
    }

    /// Moves to `next`, tracing old → new at debug level.
    fn enter(&mut self, next: State, cause: &str) {
        log::debug!(
            "{}: state from={} to={} cause={cause}",
            self.log_id,
            self.state.name(),
            next.name()
        );
        self.state = next;
    }

    /// Splits one command line off `input` (or buffers a partial one) and answers it.
    fn read_line<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> (usize, Progress<'a>) {
        if input.is_empty() {
            return (0, Progress::Emit(Event::NeedInput));
        }
        let limit = self.config.max_line_length;
        let Some(lf) = input.iter().position(|&b| b == b'\n') else {
            if !self.discarding_line {
                // Even the shortest line end (a bare LF) would take this line to `limit + 1`
                // bytes or more: answer now, rather than hold a line we will refuse anyway.
                if self.line.len() + input.len() >= limit {
                    self.discarding_line = true;
                    // Where the line went over the limit, however the input was split.
                    let over = (limit - self.line.len()).min(input.len());
                    if let Some(end) = self.refuse_long_line(out) {
                        return (over, Progress::Emit(end));
                    }
                } else {
                    self.line.extend_from_slice(input);
                }
            }
            return (input.len(), Progress::Emit(Event::NeedInput));
        };
        let used = lf + 1;
        if self.discarding_line {
            self.discarding_line = false;
            return (used, Progress::Continue);
        }
        if self.line.len() + lf >= limit {
            let over = limit - self.line.len();
            return match self.refuse_long_line(out) {
                Some(end) => (over, Progress::Emit(end)),
                None => (used, Progress::Continue),
            };
        }
        let event = if self.line.is_empty() {
            self.command_line(&input[..lf], out)
        } else {
            let mut line = mem::take(&mut self.line);
            line.extend_from_slice(&input[..lf]);
            let event = self.command_line(&line, out);
            line.clear();
            self.line = line;
            event
        };
        (used, event.map_or(Progress::Continue, Progress::Emit))
    }

    /// Answers a command line over the limit; an event when that ends the session.
    fn refuse_long_line(&mut self, out: &mut Vec<u8>) -> Option<Event<'static>> {
        log::debug!(
            "{}: command line too long limit={}",
            self.log_id,
            self.config.max_line_length
        );
        self.line.clear();
        out.extend_from_slice(reply::LINE_TOO_LONG.as_bytes());
        self.count_error(out, None)
    }

    /// Parses and answers one command line (its LF removed), and ends the session once
    /// [`HARD_ERROR_LIMIT`] commands were refused.
    fn command_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Option<Event<'static>> {
        let start = out.len();
        let event = self.answer_command(line, out);
        if out.get(start) == Some(&b'5') {
            self.count_error(out, event)
        } else {
            event
        }
    }

    /// Counts one command answered with a permanent error; at the limit, says so and ends
    /// the session (aborting a chunked message first, as QUIT does).
    fn count_error(
        &mut self,
        out: &mut Vec<u8>,
        event: Option<Event<'static>>,
    ) -> Option<Event<'static>> {
        self.errors += 1;
        if self.errors < HARD_ERROR_LIMIT || matches!(self.state, State::Closed) {
            return event;
        }
        log::info!(
            "{}: too many errors ({}): closing",
            self.log_id,
            self.errors
        );
        let reply = format!("421 4.7.0 {} Error: too many errors\r\n", self.hostname);
        let end = self.close_with(&reply, "errors", out);
        // The refused command may itself have aborted a chunked message (a bad BDAT).
        if matches!(event, Some(Event::MessageAbort)) {
            event
        } else {
            end
        }
    }

    /// Ends the session with `reply`. A chunked message already started is aborted first:
    /// [`Event::MessageAbort`] now, and the next [`Session::feed`] returns [`Event::Close`].
    fn close_with(
        &mut self,
        reply: &str,
        cause: &str,
        out: &mut Vec<u8>,
    ) -> Option<Event<'static>> {
        let aborting = matches!(self.state, State::Chunked { .. });
        self.enter(State::Closed, cause);
        out.extend_from_slice(reply.as_bytes());
        Some(if aborting {
            Event::MessageAbort
        } else {
            Event::Close
        })
    }

    fn answer_command(&mut self, line: &[u8], out: &mut Vec<u8>) -> Option<Event<'static>> {
        let command = match parser::parse(line) {
            Ok(command) => command,
            Err(error) => return self.refuse(error, out),
        };
        match command {
            Command::Hello { name, extended } => self.hello(name, extended, out),
            Command::Mail { sender, params } => self.mail(sender, params, out),
            Command::Rcpt { recipient } => self.rcpt(recipient, out),
            Command::Data => self.data(out),
            Command::Bdat { size, last } => self.bdat(size, last, out),
            Command::Rset => self.rset(out),
            Command::Quit => self.quit(out),
            Command::Noop => answer(out, reply::OK),
            Command::Vrfy => answer(out, reply::CANNOT_VRFY),
            Command::Help => answer(out, reply::HELP),
            Command::Expn | Command::StartTls | Command::Auth => {
                answer(out, reply::NOT_IMPLEMENTED)
            }
            Command::Forbidden(kind) => self.forbidden(kind, out),
        }
    }

    /// Not SMTP (an HTTP request, a header line, a line not starting with a letter): what
    /// follows it (an HTTP body, the rest of a message whose DATA was refused, which may hold
    /// lines that look like commands) is never read, and a chunked message already started
    /// is aborted first. Postfix says the same and closes.
    fn forbidden(&mut self, kind: NonSmtp, out: &mut Vec<u8>) -> Option<Event<'static>> {
        log::warn!(
            "{}: non-SMTP command ({}): closing",
            self.log_id,
            kind.describe()
        );
        self.close_with(reply::FORBIDDEN, kind.describe(), out)
    }

    /// Answers a line that did not parse.
    fn refuse(&mut self, error: ParseError, out: &mut Vec<u8>) -> Option<Event<'static>> {
        if error == ParseError::BdatSyntax {
            // The chunk's size is unknown, so where the client's data ends cannot be known
            // either: reading on would take its octets for commands. Postfix hangs up too
            // (RFC 3030 §2: a failed BDAT fails the transaction).
            log::info!(
                "{}: reject: command refused ({error}): closing",
                self.log_id
            );
            return self.close_with(reply::SYNTAX_BDAT, "BDAT syntax", out);
        }
        // At info, as Postfix logs refused addresses: a client whose MAIL or RCPT is
        // refused may drop the message, and the log is the admin's only trace of it. (At
        // most HARD_ERROR_LIMIT lines per connection.)
        log::info!(
            "{}: reject: command refused ({error}): {}",
            self.log_id,
            error.reply().trim_end()
        );
        out.extend_from_slice(error.reply().as_bytes());
        None
    }

    /// HELO / EHLO: like RSET, it ends any transaction (RFC 5321 §4.1.4; Postfix does the
    /// same), including a chunked message already started.
    fn hello(&mut self, name: String, extended: bool, out: &mut Vec<u8>) -> Option<Event<'static>> {
        let aborting = matches!(self.state, State::Chunked { .. });
        if !matches!(self.state, State::Idle) {
            self.enter(State::Idle, if extended { "EHLO" } else { "HELO" });
        }
        self.helo = name;
        let mut text = String::new();
        if extended {
            // Writing into a String cannot fail.
            let _ = write!(
                text,
                "250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
                 250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n",
                self.hostname, self.config.max_message_size
            );
        } else {
            let _ = write!(text, "250 {}\r\n", self.hostname);
        }
        out.extend_from_slice(text.as_bytes());
        aborting.then_some(Event::MessageAbort)
    }

    /// MAIL FROM.
    fn mail(
        &mut self,
        sender: String,
        params: MailParams,
        out: &mut Vec<u8>,
    ) -> Option<Event<'static>> {
        if !matches!(self.state, State::Idle) {
            return answer(out, reply::NESTED_MAIL);
        }
        if params
            .size
            .is_some_and(|size| size > self.config.max_message_size)
        {
            self.reject("MAIL", reply::TOO_BIG, out);
            return None;
        }
        let pending = Pending {
            sender,
            recipients: Vec::new(),
            body: params.body,
            over_limit: false,
        };
        self.enter(State::Mail(pending), "MAIL");
        answer(out, reply::SENDER_OK)
    }

    /// RCPT TO.
    fn rcpt(&mut self, recipient: String, out: &mut Vec<u8>) -> Option<Event<'static>> {
        let pending = match &mut self.state {
            State::Mail(pending) => pending,
            State::Chunked { .. } => return answer(out, reply::BDAT_IN_PROGRESS),
            _ => return answer(out, reply::NEED_MAIL),
        };
        if pending.recipients.len() >= self.config.max_recipients {
            // Once a transaction (a 4xx does not count toward the error limit).
            if !pending.over_limit {
                pending.over_limit = true;
                log::info!(
                    "{}: reject: RCPT: {}",
                    self.log_id,
                    reply::TOO_MANY_RECIPIENTS.trim_end()
                );
            }
            return answer(out, reply::TOO_MANY_RECIPIENTS);
        }
        pending.recipients.push(recipient);
        answer(out, reply::RECIPIENT_OK)
    }

    /// DATA.
    fn data(&mut self, out: &mut Vec<u8>) -> Option<Event<'static>> {
        let pending = match &mut self.state {
            State::Mail(pending) => pending,
            State::Chunked { .. } => return answer(out, reply::BDAT_IN_PROGRESS),
            // Postfix's answer to DATA without a transaction, too.
            _ => return answer(out, reply::NEED_RECIPIENT),
        };
        if pending.recipients.is_empty() {
            return answer(out, reply::NO_VALID_RECIPIENTS);
        }
        if pending.body == Body::BinaryMime {
            return answer(out, reply::BINARYMIME_NEEDS_BDAT);
        }
        let pending = mem::take(pending);
        let transaction = self.transaction_of(pending);
        let body = DataBody {
            receiver: DataReceiver::new(),
            intake: Intake::default(),
        };
        self.enter(State::Data(body), "DATA");
        out.extend_from_slice(reply::START_DATA.as_bytes());
        Some(Event::MessageStart(transaction))
    }

    /// BDAT: its octets are always read, whether the command is accepted or not.
    fn bdat(&mut self, size: u64, last: bool, out: &mut Vec<u8>) -> Option<Event<'static>> {
        let chunk = |intake| Chunk {
            remaining: size,
            declared: size,
            last,
            intake,
        };
        match &mut self.state {
            State::Mail(pending) if !pending.recipients.is_empty() => {
                let pending = mem::take(pending);
                let transaction = self.transaction_of(pending);
                self.enter(State::Chunk(chunk(Intake::default())), "BDAT");
                Some(Event::MessageStart(transaction))
            }
            State::Chunked { size: so_far } => {
                let intake = Intake {
                    size: *so_far,
                    aborted: false,
                };
                self.enter(State::Chunk(chunk(intake)), "BDAT");
                None
            }
            State::Mail(pending) => {
                out.extend_from_slice(reply::NO_VALID_RECIPIENTS.as_bytes());
                if size > 0 {
                    let resume = Some(mem::take(pending));
                    self.enter(
                        State::Discard {
                            remaining: size,
                            resume,
                        },
                        "BDAT",
                    );
                }
                None
            }
            _ => {
                out.extend_from_slice(reply::NEED_RECIPIENT.as_bytes());
                if size > 0 {
                    self.enter(
                        State::Discard {
                            remaining: size,
                            resume: None,
                        },
                        "BDAT",
                    );
                }
                None
            }
        }
    }

    /// RSET: ends any transaction, including a chunked message already started.
    fn rset(&mut self, out: &mut Vec<u8>) -> Option<Event<'static>> {
        let aborting = matches!(self.state, State::Chunked { .. });
        if !matches!(self.state, State::Idle) {
            self.enter(State::Idle, "RSET");
        }
        out.extend_from_slice(reply::OK.as_bytes());
        aborting.then_some(Event::MessageAbort)
    }

    /// QUIT: a chunked message already started is aborted first; the next
    /// [`Session::feed`] returns [`Event::Close`].
    fn quit(&mut self, out: &mut Vec<u8>) -> Option<Event<'static>> {
        self.close_with(reply::BYE, "QUIT", out)
    }

    fn transaction_of(&self, pending: Pending) -> Transaction {
        Transaction {
            helo: self.helo.clone(),
            sender: pending.sender,
            recipients: pending.recipients,
        }
    }
}

/// Appends a fixed reply; no event.
fn answer(out: &mut Vec<u8>, text: &str) -> Option<Event<'static>> {
    out.extend_from_slice(text.as_bytes());
    None
}

/// `min(remaining, available)` without truncating a 64-bit count on a 32-bit host.
fn chunk_len(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |remaining| remaining.min(available))
}
