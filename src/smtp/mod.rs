//! The SMTP protocol engine: bytes in, replies and events out, no I/O.
//!
//! INTERFACE SKELETON — owned by the SMTP engine helper. The daemon's event loop
//! (`server`) and `sendmail -bs` (`smtp::stdio`) drive the same [`Session`]; neither knows
//! the protocol, and the engine knows nothing of sockets, clocks or files.
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

pub mod stdio;

/// Limits and names for one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our name in the greeting and the EHLO reply.
    pub hostname: String,
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
    /// Message bytes to append to the open spool file.
    Data(&'a [u8]),
    /// The message is complete: commit it, then call [`Session::committed`].
    MessageEnd,
    /// Discard the open spool file; the reply has been written.
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
    /// `max_connections` are already open.
    pub const TOO_MANY_CONNECTIONS: &str = "421 4.3.2 Too many connections, try again later\r\n";
    /// The daemon is shutting down.
    pub const SHUTTING_DOWN: &str =
        "421 4.3.2 Service shutting down, closing transmission channel\r\n";
    /// No command for `idle_timeout`.
    pub const IDLE_TIMEOUT: &str = "421 4.4.2 Timeout exceeded, closing transmission channel\r\n";
    /// The session lasted longer than `session_timeout`.
    pub const SESSION_TIMEOUT: &str =
        "421 4.4.2 Session lasted too long, closing transmission channel\r\n";
}

/// The state of one SMTP session.
#[derive(Debug)]
pub struct Session {
    _private: (),
}

impl Session {
    /// A new session, before the greeting.
    pub fn new(config: SessionConfig) -> Session {
        let _ = config;
        todo!()
    }

    /// Writes the `220 <hostname> ESMTP` greeting.
    pub fn greeting(&mut self, out: &mut Vec<u8>) {
        let _ = out;
        todo!()
    }

    /// Processes input from its start; returns how many bytes were consumed and what to do.
    pub fn feed<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> (usize, Event<'a>) {
        let _ = (input, out);
        todo!()
    }

    /// The host's answer to [`Event::MessageEnd`]: `Ok(queue_id)` once the message is durable,
    /// `Err(reason)` when it could not be written (`452 4.3.1`, never 250).
    pub fn committed(&mut self, result: Result<&str, &str>, out: &mut Vec<u8>) {
        let _ = (result, out);
        todo!()
    }

    /// Whether a committed message is awaited.
    pub fn is_waiting(&self) -> bool {
        todo!()
    }

    /// Whether a message is being received (between MessageStart and MessageEnd/Abort), so a
    /// host that closes the connection knows to discard the spool file.
    pub fn in_message(&self) -> bool {
        todo!()
    }
}
