//! `sendmail -bs`: one SMTP session over stdin/stdout, driven synchronously by blocking
//! reads and writes (Symfony Mailer, SwiftMailer, Laravel, Alpine, `swaks --pipe`).
//!
//! The same [`Session`] as the daemon's does the protocol; this module only moves bytes. A
//! message is collected in memory — at most `max_message_size` bytes, because the engine
//! aborts a message the moment it would grow past that — and handed to the caller's `submit`
//! at its end, whose answer becomes the `250`/`452` reply. Replies are flushed after each
//! chunk of input has been processed, so a pipelining client gets them in batches and a
//! lock-step client (Symfony waits for every reply) never waits on us.

use std::io::{self, Read, Write};

use super::{Event, Session, SessionConfig, Transaction};

/// Size of the read buffer: one pipe buffer's worth.
const READ_BUFFER: usize = 64 * 1024;

/// Runs one session on `input`/`output` until QUIT or end of input. Each complete message is
/// handed to `submit` with its transaction and raw bytes (held in memory, at most
/// `max_message_size`); `submit` returns the queue ID once the message is safe, or the reason
/// it is not (the client then gets `452 4.3.1`). Returns the number of messages accepted.
///
/// Errors are those of `input` and `output` (`Interrupted` reads are retried). A message
/// still open at end of input was never acknowledged and is dropped.
pub fn serve<F>(
    config: SessionConfig,
    input: &mut dyn Read,
    output: &mut dyn Write,
    mut submit: F,
) -> io::Result<usize>
where
    F: FnMut(Transaction, Vec<u8>) -> Result<String, String>,
{
    let mut session = Session::new(config);
    let mut out = Vec::new();
    session.greeting(&mut out);
    flush(output, &mut out)?;

    let mut buffer = vec![0u8; READ_BUFFER];
    let mut message: Option<(Transaction, Vec<u8>)> = None;
    let mut accepted = 0;
    loop {
        let read = match input.read(&mut buffer) {
            Ok(0) => {
                flush(output, &mut out)?;
                return Ok(accepted);
            }
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        let mut pos = 0;
        loop {
            let (used, event) = session.feed(&buffer[pos..read], &mut out);
            pos += used;
            match event {
                Event::NeedInput => break,
                Event::MessageStart(transaction) => message = Some((transaction, Vec::new())),
                Event::Data(bytes) => {
                    if let Some((_, body)) = message.as_mut() {
                        body.extend_from_slice(bytes);
                    }
                }
                Event::MessageAbort => message = None,
                Event::MessageEnd => {
                    let result = match message.take() {
                        Some((transaction, body)) => submit(transaction, body),
                        None => Err("message end without a message".to_string()),
                    };
                    match result {
                        Ok(id) => {
                            accepted += 1;
                            session.committed(Ok(&id), &mut out);
                        }
                        Err(reason) => session.committed(Err(&reason), &mut out),
                    }
                }
                // Every MessageEnd is committed at once above, so the session can only be
                // waiting if the engine broke its contract; stop rather than spin.
                Event::Waiting => {
                    flush(output, &mut out)?;
                    return Err(io::Error::other(
                        "smtp session stalled waiting for a commit",
                    ));
                }
                Event::Close => {
                    flush(output, &mut out)?;
                    return Ok(accepted);
                }
            }
        }
        flush(output, &mut out)?;
    }
}

/// Writes and flushes the pending replies, if any.
fn flush(output: &mut dyn Write, out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    output.write_all(out)?;
    out.clear();
    output.flush()
}
