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
//! Anything else gets `error: …`. An answer is `ok <length>` and its text, so a listing cut
//! short is never taken for a whole one. A thread of its own serves the requests one at a
//! time, at the delivery thread's lowered CPU priority: a request line must arrive within
//! [`REQUEST_DEADLINE`] and each write of the answer within [`IO_TIMEOUT`], and forced queue
//! runs come at most every [`FLUSH_INTERVAL`]. A local user can make it work and delay
//! another user's `mailq`, never make the event loop wait or the bridge be hammered.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use crate::config::Config;
use crate::deliver::{DeliveryHandle, DELIVERY_NICENESS};
use crate::spool::{escape_text, Spool};

/// The socket, relative to the spool directory.
pub const SOCKET: &str = "public/showq";
/// How long one write of an answer, or of a request, may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to send its request line, in all.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(1);
/// The shortest time between two queue runs forced through the socket; a `flush` sooner is
/// answered `ok` and coalesced with the one before.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);
/// How long a client keeps trying while the daemon's queue of pending requests is full.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
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
pub fn start(config: &Config, delivery: DeliveryHandle) -> io::Result<()> {
    let path = socket_path(&config.spool_dir);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
    let spool = Spool::new(config.spool_dir.clone());
    thread::Builder::new()
        .name("showq".into())
        .spawn(move || serve(&listener, &spool, &delivery))?;
    Ok(())
}

fn serve(listener: &UnixListener, spool: &Spool, delivery: &DeliveryHandle) {
    if let Err(e) = crate::deliver::lower_own_priority(DELIVERY_NICENESS) {
        log::info!("showq: cannot lower its CPU priority ({e})");
    }
    let mut last_flush: Option<Instant> = None;
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = answer(stream, spool, delivery, &mut last_flush) {
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
fn answer(
    stream: UnixStream,
    spool: &Spool,
    delivery: &DeliveryHandle,
    last_flush: &mut Option<Instant>,
) -> io::Result<()> {
    let line = read_request(&stream)?;
    let reply = match line.trim() {
        "list" => match queue_listing(spool, delivery.max_message_size()) {
            Ok((listing, taken_in)) => {
                if taken_in > 0 {
                    // What the listing took in from the maildrop goes out now, not at the
                    // delivery thread's next look.
                    delivery.nudge();
                }
                ok(&listing)
            }
            Err(e) => format!("error: cannot read the queue: {e}\n"),
        },
        "flush" => {
            if last_flush.is_some_and(|t| t.elapsed() < FLUSH_INTERVAL) {
                ok("")
            } else if delivery.flush() {
                *last_flush = Some(Instant::now());
                ok("")
            } else {
                "error: the delivery thread has stopped\n".to_owned()
            }
        }
        _ => "error: unknown request\n".to_owned(),
    };
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    (&stream).write_all(reply.as_bytes())
}

/// An answer: `ok`, the length of `text` in bytes, then `text`.
fn ok(text: &str) -> String {
    format!("ok {}\n{text}", text.len())
}

/// The request line, which must arrive whole within [`REQUEST_DEADLINE`] (a client sending
/// a byte now and then does not hold the thread longer).
fn read_request(stream: &UnixStream) -> io::Result<String> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut line = Vec::new();
    let mut buf = [0u8; MAX_REQUEST as usize];
    while !line.contains(&b'\n') && (line.len() as u64) < MAX_REQUEST {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request too slow"));
        }
        stream.set_read_timeout(Some(left))?;
        match (&*stream).read(&mut buf[..MAX_REQUEST as usize - line.len()]) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Asks the running daemon: `Ok(None)` when none answers at the socket, the answer's text
/// after `ok` otherwise, an error when it answered with one.
pub fn request(spool_dir: &Path, what: &str) -> io::Result<Option<String>> {
    let mut stream = match connect(&socket_path(spool_dir)) {
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
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let Some((status, text)) = answer.split_once('\n') else {
        return Err(io::Error::other("the daemon's answer was cut short"));
    };
    if let Some(len) = status.strip_prefix("ok ") {
        return match len.parse::<usize>() {
            Ok(len) if len == text.len() => Ok(Some(text.to_owned())),
            _ => Err(io::Error::other("the daemon's answer was cut short")),
        };
    }
    let why = status.strip_prefix("error: ").unwrap_or(status);
    Err(io::Error::other(format!("the daemon answered: {why}")))
}

/// Connects without waiting forever: a Unix socket whose queue of pending connections is
/// full (someone opening many and sending nothing) makes a blocking `connect` wait for good,
/// so the attempt is non-blocking and repeated for [`CONNECT_PATIENCE`].
fn connect(path: &Path) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    let give_up = Instant::now() + CONNECT_PATIENCE;
    loop {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io::Error::from)?;
        match socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
            Ok(()) => {
                // SAFETY: `fd` is a connected socket this function owns; its ownership moves
                // into the stream.
                let stream = unsafe { UnixStream::from_raw_fd(fd.into_raw_fd()) };
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(Errno::EAGAIN) if Instant::now() < give_up => {
                thread::sleep(Duration::from_millis(50));
            }
            Err(Errno::EAGAIN) => {
                return Err(io::Error::other(
                    "the daemon is not taking queue requests (too many pending)",
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `mailq`'s text: `Mail queue is empty`, or one line per waiting message: ID, size, arrival
/// (UTC), sender, recipients and the last error; and how many messages local users left in
/// the maildrop were taken in first, so that they are listed with the rest.
pub fn queue_listing(spool: &Spool, max_size: u64) -> io::Result<(String, usize)> {
    if !spool.root().exists() {
        // Nothing was ever spooled on this box.
        return Ok(("Mail queue is empty\n".to_owned(), 0));
    }
    // What the maildrop holds is listed once taken in; when it cannot be (a full disk), the
    // queue is still listed, with a line saying so.
    let (taken_in, untaken) = match spool.ingest_maildrop(max_size) {
        Ok(report) => (report.accepted, None),
        Err(e) => (0, Some(e)),
    };
    let entries = spool.list()?;
    let mut text = String::new();
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
                .map(|r| escape_text(r))
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
            escape_text(&entry.envelope.sender),
            recipients
        );
        if let Some(error) = &entry.last_error {
            let _ = write!(text, "  ({})", escape_text(&one_line(error)));
        }
        text.push('\n');
    }
    // Notes, then the last line, which monitoring reads (check_mailq -M postfix): Postfix's
    // closing line, or "Mail queue is empty".
    // Left in the maildrop: not listed (their files are their senders'), but counted in the
    // closing line, so that monitoring does not see an empty queue while mail waits.
    let mut left = crate::spool::MaildropLeft::default();
    if let Some(e) = untaken {
        log::warn!("cannot take in the maildrop: {e}");
        left = spool.maildrop_left(SystemTime::now()).unwrap_or_default();
        let _ = writeln!(
            text,
            "-- the maildrop could not be taken in ({}): its {} message(s) are not listed, but counted below",
            escape_text(&e.to_string()),
            left.entries
        );
    }
    let failed = spool.failed_names().map(|names| names.len()).unwrap_or(0);
    if failed > 0 {
        let _ = writeln!(
            text,
            "-- {failed} message(s) kept in failed/ with the reason (smtp_bridge --requeue all sends again those that ran out of lifetime)"
        );
    }
    let requests = entries.len() + left.entries;
    if requests == 0 {
        text.push_str("Mail queue is empty\n");
    } else {
        let bytes: u64 = entries.iter().map(|e| e.size).sum::<u64>() + left.bytes;
        let _ = writeln!(
            text,
            "-- {} Kbytes in {} Request{}.",
            bytes.div_ceil(1024),
            requests,
            if requests == 1 { "" } else { "s" }
        );
    }
    Ok((text, taken_in))
}

/// Keeps a listing to one line per message whatever a stored reason holds.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_maildrop_that_cannot_be_taken_in_still_lists_the_queue() {
        let dir = std::env::temp_dir().join(format!("smtp_bridge-showq-{}", std::process::id()));
        let spool = Spool::new(&dir);
        spool.prepare(None).unwrap();
        let envelope = crate::envelope::Envelope {
            sender: "root@host".into(),
            recipients: vec!["owner@host".into()],
            origin: crate::envelope::Origin::Local {
                uid: 0,
                user: "root".into(),
                full_name: None,
            },
            arrival: std::time::SystemTime::now(),
        };
        let mut writer = spool.create(&envelope).unwrap();
        std::io::Write::write_all(&mut writer, b"Subject: waiting\n\nx\n").unwrap();
        writer.commit_file().unwrap();
        // The maildrop replaced by a file: taking it in fails.
        std::fs::remove_dir(dir.join("maildrop")).unwrap();
        std::fs::write(dir.join("maildrop"), "").unwrap();
        let listing = queue_listing(&spool, 1 << 20);
        let _ = std::fs::remove_dir_all(&dir);
        let (text, taken_in) = listing.unwrap();
        assert_eq!(taken_in, 0);
        assert!(text.contains("<root@host>  owner@host"), "{text}");
        assert!(
            text.contains("the maildrop could not be taken in"),
            "{text}"
        );
        // The note comes before the closing line, which monitoring reads.
        assert!(text.ends_with("\n-- 1 Kbytes in 1 Request.\n"), "{text}");
    }

    #[test]
    fn one_line_listing() {
        assert_eq!(one_line("connect:\n refused\t now"), "connect: refused now");
    }
}
