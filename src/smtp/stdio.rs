//! `sendmail -bs`: one SMTP session over stdin/stdout, driven synchronously.
//!
//! INTERFACE SKELETON — owned by the SMTP engine helper.

use std::io::{self, Read, Write};

use super::{SessionConfig, Transaction};

/// Runs one session on `input`/`output` until QUIT or end of input. Each complete message is
/// handed to `submit` with its transaction and raw bytes (held in memory, at most
/// `max_message_size`); `submit` returns the queue ID once the message is safe, or the reason
/// it is not (the client then gets `452 4.3.1`). Returns the number of messages accepted.
pub fn serve<F>(
    config: SessionConfig,
    input: &mut dyn Read,
    output: &mut dyn Write,
    submit: F,
) -> io::Result<usize>
where
    F: FnMut(Transaction, Vec<u8>) -> Result<String, String>,
{
    let _ = (config, input, output, submit);
    todo!()
}
