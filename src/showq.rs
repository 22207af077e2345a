//! `mailq` and `sendmail -q` for every local user, as Postfix's `showq` and `flush` services
//! give them. The queue is readable only by the daemon's user, so the running daemon answers
//! for it over a Unix socket in the spool, [`SOCKET`] (mode 0666 in a 0755 directory).
//!
//! One request per connection, one line:
//!
//! - `list`: the listing root's `mailq` prints ([`queue_listing`]), after `ok`.
//! - `flush`: the delivery thread delivers what waits now, ignoring retry delays, as root's
//!   `sendmail -q` does; answered `ok` at once, delivery goes on in the background.
//!
//! Anything else gets `error: …`. A thread of its own serves the requests one at a time, with
//! [`IO_TIMEOUT`] for each read and write, at the delivery thread's lowered CPU priority: a
//! local user can make it work, and never make the event loop wait.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use crate::config::Config;
use crate::deliver::{Flusher, DELIVERY_NICENESS};
use crate::spool::Spool;

/// The socket, relative to the spool directory.
pub const SOCKET: &str = "public/showq";
/// How long one read or write of a request may take, on either side.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for a whole listing (a long queue takes a while to read).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest request line read.
const MAX_REQUEST: u64 = 64;
/// The largest answer a client reads.
const MAX_ANSWER: u64 = 256 << 20;

/// Where the socket of the spool at `spool_dir` is.
pub fn socket_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(SOCKET)
}

/// Binds the socket (replacing one a previous run left) and starts the thread that serves
/// it. Run as the spool's owner, after [`Spool::prepare`] made `public/`.
pub fn start(config: &Config, flusher: Flusher) -> io::Result<()> {
    let path = socket_path(&config.spool_dir);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
    let spool = Spool::new(config.spool_dir.clone());
    let max_size = config.max_message_size;
    thread::Builder::new()
        .name("showq".into())
        .spawn(move || serve(&listener, &spool, max_size, &flusher))?;
    Ok(())
}

fn serve(listener: &UnixListener, spool: &Spool, max_size: u64, flusher: &Flusher) {
    if let Err(e) = crate::deliver::lower_own_priority(DELIVERY_NICENESS) {
        log::info!("showq: cannot lower its CPU priority ({e})");
    }
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = answer(stream, spool, max_size, flusher) {
                    log::debug!("showq: request not answered: {e}");
                }
            }
            Err(e) => {
                // Out of descriptors, say: do not spin on it.
                log::warn!("showq: cannot accept a request: {e}");
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Reads one request line and answers it.
fn answer(stream: UnixStream, spool: &Spool, max_size: u64, flusher: &Flusher) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = match line.trim() {
        "list" => match queue_listing(spool, max_size) {
            Ok(listing) => format!("ok\n{listing}"),
            Err(e) => format!("error: cannot read the queue: {e}\n"),
        },
        "flush" => {
            if flusher.flush() {
                "ok\n".to_owned()
            } else {
                "error: the delivery thread has stopped\n".to_owned()
            }
        }
        _ => "error: unknown request\n".to_owned(),
    };
    (&stream).write_all(reply.as_bytes())
}

/// Asks the running daemon: `Ok(None)` when none answers at the socket, the answer's text
/// after `ok` otherwise, an error when it answered with one.
pub fn request(spool_dir: &Path, what: &str) -> io::Result<Option<String>> {
    let mut stream = match UnixStream::connect(socket_path(spool_dir)) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::PermissionDenied
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(format!("{what}\n").as_bytes())?;
    let mut text = String::new();
    stream.take(MAX_ANSWER).read_to_string(&mut text)?;
    match text.strip_prefix("ok\n") {
        Some(rest) => Ok(Some(rest.to_owned())),
        None => {
            let why = text.trim().strip_prefix("error: ").unwrap_or(text.trim());
            Err(io::Error::other(format!("the daemon answered: {why}")))
        }
    }
}

/// `mailq`'s text: `Mail queue is empty`, or one line per waiting message: ID, size, arrival
/// (UTC), sender, recipients and the last error. What local users left in the maildrop is
/// taken in first, so it is listed with the rest.
pub fn queue_listing(spool: &Spool, max_size: u64) -> io::Result<String> {
    if !spool.root().exists() {
        // Nothing was ever spooled on this box.
        return Ok("Mail queue is empty\n".to_owned());
    }
    spool.ingest_maildrop(max_size)?;
    let entries = spool.list()?;
    let mut text = String::new();
    if entries.is_empty() {
        text.push_str("Mail queue is empty\n");
    }
    for entry in &entries {
        // Addresses come from any local user and this goes to someone's terminal: control
        // characters are shown %XX-escaped, never sent as is.
        let recipients = if entry.envelope.recipients.is_empty() {
            "(no recipients)".to_owned()
        } else {
            entry
                .envelope
                .recipients
                .iter()
                .map(|r| printable(r))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Writing into a String cannot fail.
        let _ = write!(
            text,
            "{}  {:>8}  {}  <{}>  {}",
            entry.id,
            entry.size,
            crate::datetime::iso(entry.envelope.arrival),
            printable(&entry.envelope.sender),
            recipients
        );
        if let Some(error) = &entry.last_error {
            let _ = write!(text, "  ({})", printable(&one_line(error)));
        }
        text.push('\n');
    }
    Ok(text)
}

/// A reason as readable text with its control characters (ESC, BEL, …) `%XX`-escaped.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Keeps a listing to one line per message whatever a stored reason holds.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
