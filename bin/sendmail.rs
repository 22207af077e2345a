//! The `sendmail` shim (also `mailq` and `newaliases`, by the name it is run under): every
//! piece of logic is in `smtp_bridge::sendmail`; this only runs it and turns the outcome into
//! an exit status, with one line on stderr on failure.

use std::io;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Arguments that are not UTF-8 are read lossily: addresses and options are ASCII, and
    // a mangled display name is better than refusing the mail.
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let stdin = io::stdin();
    let stdout = io::stdout();
    match smtp_bridge::sendmail::run(&argv, &mut stdin.lock(), &mut stdout.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A message that could not be queued was logged with its envelope already.
            if !matches!(e, smtp_bridge::sendmail::SendmailError::Submit(_)) {
                log::error!("{e}");
            }
            eprintln!("sendmail: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
