//! The sendmail command line, parsed by hand with getopt conventions into [`Args`].
//!
//! pico-args does not fit sendmail's grammar: `-o` takes its glued text as letter plus value,
//! `-q` takes an optional argument that must be glued, flags cluster (`-ti`), and every
//! recipient argument is an address list. The rules follow Postfix (`sendmail.c`), whose
//! getopt stops at the first non-option, with one deliberate difference: an option we do
//! not know is accepted and logged instead of exiting 64, because being indistinguishable
//! from the MTA that callers were written for matters more than strictness.

use std::fmt;
use std::path::PathBuf;

use super::address;

/// What the invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Read a message from stdin and submit it (`-bm`, the default).
    Deliver,
    /// Speak SMTP on stdin/stdout (`-bs`).
    Smtp,
    /// List the queue (`-bp`, or the name `mailq`).
    ListQueue,
    /// Deliver what is queued now (`-q`, `-qR…`, `-qI…`, `-qS…`, `-qf`, `-q!…`, or the name
    /// `runq`).
    RunQueue,
    /// Print `<addr>... deliverable` for each recipient without reading stdin (`-bv`).
    Verify,
    /// Rebuild the alias database (`-bi`, `-I`, or the name `newaliases`): there is none, so
    /// this succeeds silently.
    NewAliases,
    /// A mode that has no meaning for us but that Postfix accepts with exit 0: the daemon
    /// modes `-bd` and `-bl` (or the name `smtpd`), the host tests `-bh` and `-bH`, and a
    /// queue interval such as `-q30m` or `-qp`. The string is the option, for the log.
    Noop(String),
    /// Print the usage summary on stdout (`--help`): a person at a terminal trying it must
    /// not end up sending an empty message or waiting for one.
    Help,
    /// Print the version on stdout (`--version`).
    Version,
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// What to do.
    pub mode: Mode,
    /// `-t`: add the recipients of the `To`/`Cc`/`Bcc` (or `Resent-*`) headers.
    pub extract_recipients: bool,
    /// `-i`, `-oi`: a line holding a single dot does not end the message.
    pub ignore_dots: bool,
    /// `-f` or `-r`: the envelope sender; `Some("")` is the null sender (`''` or `<>`).
    pub sender: Option<String>,
    /// `-F`: the sender's full name.
    pub full_name: Option<String>,
    /// The recipient arguments, each split as an address list.
    pub recipients: Vec<String>,
    /// `--config PATH`.
    pub config: Option<PathBuf>,
    /// `-v`, counted.
    pub verbose: u8,
    /// Options that were accepted and ignored, as given (for the debug log).
    pub ignored: Vec<String>,
    /// Options we do not know, as given (accepted; logged at debug level).
    pub unknown: Vec<String>,
}

/// Why a command line cannot be used (exit 64, as with Postfix).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArgsError {
    /// Occurs when an option that needs a value (`-f`, `-o`, …) is the last word.
    MissingValue(char),
    /// Occurs for `--config` without a path.
    MissingConfigPath,
    /// Occurs for the modes Postfix refuses with 64: `-bt`, `-ba`, `-bD`, `-bP`, `-bz`.
    Unsupported(String),
    /// Occurs when `-t` is combined with a mode other than delivery (`-t -bv`), as Postfix
    /// refuses it.
    ExtractOutsideDelivery,
    /// Occurs when the sender (`-f`, `-r`, a `From ` line) or a recipient (an argument, or a
    /// header under `-t`) holds a control character; the field is named, the address is not
    /// repeated.
    ControlCharacter(&'static str),
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgsError::MissingValue(c) => write!(f, "option requires an argument -- '{c}'"),
            ArgsError::MissingConfigPath => f.write_str("option --config requires a path"),
            // The option is the caller's text and this line goes to a terminal, a cron
            // mail or a log: control characters are shown escaped, never acted on.
            ArgsError::Unsupported(opt) => write!(f, "{}: unsupported mode", opt.escape_debug()),
            ArgsError::ExtractOutsideDelivery => {
                f.write_str("-t can be used only in delivery mode")
            }
            ArgsError::ControlCharacter(what) => {
                write!(f, "{what} address contains a control character")
            }
        }
    }
}

impl std::error::Error for ArgsError {}

/// Options with a defined effect, as the man page names them.
pub const HONOURED_OPTIONS: &[&str] = &[
    "-t",
    "-i",
    "-oi",
    "-f",
    "-r",
    "-F",
    "-bm",
    "-bs",
    "-bp",
    "-q",
    "-bv",
    "-bi",
    "-I",
    "-bd",
    "-bl",
    "-bh",
    "-bH",
    "-v",
    "--",
    "--config",
    "--help",
    "--version",
];

/// Modes refused with exit 64, as Postfix refuses them.
pub const REJECTED_OPTIONS: &[&str] = &["-bt", "-ba", "-bD", "-bP", "-bz"];

/// Options accepted and ignored. This is the one list the parser consults: a letter here is
/// consumed (with its value when it takes one, see [`TAKES_VALUE`]) and logged at debug
/// level. Callers pass them for MTAs that have meaning for them; we have no delivery agents,
/// no DSN, no aliases and no queue tuning.
pub const IGNORED_OPTIONS: &[&str] = &[
    "-A", // -Ac / -Am: which submit.cf to use (sendmail 8).
    "-B", // body type; Postfix wants 8BITMIME or 7BIT, we take any value (cron, mutt).
    "-C", // another MTA's config file; ours is --config.
    "-D", // sendmail 8 debug output file.
    "-d", // debug categories.
    "-E", // OpenSMTPD: ignored there too.
    "-e", // -em -ee -ep -eq -ew: error reporting style; the exit code is the report.
    "-G", // gateway submission: no rewriting happens anyway.
    "-h", // hop count.
    "-L", // syslog tag of sendmail 8; ours is always `sendmail`.
    "-m", // "me too": there is no alias expansion to exclude the sender from.
    "-N", // DSN notify (mutt): we send no DSNs.
    "-n", // do not alias: there are no aliases.
    "-O", // long-form sendmail 8 option.
    "-o", // -oem, -odi, -odb, -oQ…, -oA…: delivery and error modes; only -oi has meaning.
    "-p", // protocol and host for the Received line.
    "-Q", // quarantine reason.
    "-R", // DSN return (mutt): full or headers; we send no DSNs.
    "-U", // initial user submission: always the case here.
    "-V", // DSN envelope ID.
    "-X", // sendmail 8 traffic log file.
    "-x", // OpenSMTPD/Postfix: ignored there too.
];

/// Option letters that take a value, glued (`-FCronDaemon`) or as the next word. `-q` is not
/// here: its value is optional and must be glued, so `-q` never swallows the next word.
pub const TAKES_VALUE: &str = "ABbCDdeFfhLNOopQRrVX";

/// Parses `argv` (with `argv[0]`, whose basename selects `mailq`, `newaliases`, `runq`,
/// `smtpd` or `rmail`).
pub fn parse(argv: &[String]) -> Result<Args, ArgsError> {
    let mut args = Args {
        mode: Mode::Deliver,
        extract_recipients: false,
        ignore_dots: false,
        sender: None,
        full_name: None,
        recipients: Vec::new(),
        config: None,
        verbose: 0,
        ignored: Vec::new(),
        unknown: Vec::new(),
    };
    let name = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .unwrap_or("sendmail");
    match name {
        "mailq" => args.mode = Mode::ListQueue,
        "newaliases" => args.mode = Mode::NewAliases,
        "runq" => args.mode = Mode::RunQueue,
        "smtpd" => args.mode = Mode::Noop("smtpd".into()),
        // Exim's rmail: the message ends only at EOF (UUCP mail may hold lone dots).
        "rmail" => args.ignore_dots = true,
        _ => {}
    }

    let mut i = 1;
    while i < argv.len() {
        let arg = &argv[i];
        if arg == "--" {
            i += 1;
            break;
        }
        if arg == "--config" {
            let path = argv.get(i + 1).ok_or(ArgsError::MissingConfigPath)?;
            args.config = Some(PathBuf::from(path));
            i += 2;
            continue;
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            if path.is_empty() {
                return Err(ArgsError::MissingConfigPath);
            }
            args.config = Some(PathBuf::from(path));
            i += 1;
            continue;
        }
        if arg == "--help" || arg == "--version" {
            args.mode = if arg == "--help" {
                Mode::Help
            } else {
                Mode::Version
            };
            i += 1;
            continue;
        }
        if arg.starts_with("--") {
            args.unknown.push(arg.clone());
            i += 1;
            continue;
        }
        // Postfix's getopt stops at the first non-option ("+" in its option string): what
        // follows are recipients even when it starts with a dash.
        if !arg.starts_with('-') || arg == "-" {
            break;
        }
        let cluster = &arg[1..];
        for (pos, letter) in cluster.char_indices() {
            let rest = &cluster[pos + letter.len_utf8()..];
            if letter == 'q' {
                args.apply_queue(rest);
                break;
            }
            if TAKES_VALUE.contains(letter) {
                let value = if rest.is_empty() {
                    i += 1;
                    argv.get(i).ok_or(ArgsError::MissingValue(letter))?.as_str()
                } else {
                    rest
                };
                args.apply_value(letter, value)?;
                break;
            }
            args.apply_flag(letter);
        }
        i += 1;
    }
    for arg in &argv[i.min(argv.len())..] {
        if arg == "-" {
            // Old sendmail took a lone dash as "read stdin", which it always does.
            args.ignored.push(arg.clone());
            continue;
        }
        let parsed = address::parse_list(arg);
        if parsed.iter().any(|a| address::has_control(a)) {
            return Err(ArgsError::ControlCharacter("recipient"));
        }
        args.recipients.extend(parsed);
    }
    if args.extract_recipients && args.mode != Mode::Deliver {
        return Err(ArgsError::ExtractOutsideDelivery);
    }
    Ok(args)
}

impl Args {
    fn apply_flag(&mut self, letter: char) {
        match letter {
            't' => self.extract_recipients = true,
            'i' => self.ignore_dots = true,
            'I' => self.mode = Mode::NewAliases,
            'v' => self.verbose = self.verbose.saturating_add(1),
            _ if IGNORED_OPTIONS.contains(&format!("-{letter}").as_str()) => {
                self.ignored.push(format!("-{letter}"))
            }
            _ => self.unknown.push(format!("-{letter}")),
        }
    }

    fn apply_value(&mut self, letter: char, value: &str) -> Result<(), ArgsError> {
        match letter {
            'f' | 'r' => {
                let sender = address::parse_mailbox(value).unwrap_or_default();
                if address::has_control(&sender) {
                    return Err(ArgsError::ControlCharacter("sender"));
                }
                self.sender = Some(sender);
            }
            'F' => self.full_name = Some(value.to_owned()),
            'b' => self.apply_mode(value)?,
            'o' => self.apply_o(value),
            _ => self.ignored.push(format!("-{letter} {value}")),
        }
        Ok(())
    }

    fn apply_mode(&mut self, value: &str) -> Result<(), ArgsError> {
        let option = format!("-b{value}");
        self.mode = match value.chars().next() {
            Some('m') => Mode::Deliver,
            Some('s') => Mode::Smtp,
            Some('p') => Mode::ListQueue,
            Some('v') => Mode::Verify,
            Some('i') => Mode::NewAliases,
            Some('d' | 'l' | 'h' | 'H') => Mode::Noop(option),
            Some('t' | 'a' | 'D' | 'P' | 'z') => return Err(ArgsError::Unsupported(option)),
            _ => {
                self.unknown.push(option);
                return Ok(());
            }
        };
        Ok(())
    }

    /// `-o` takes letter plus value from its glued text: `-oi`, `-oitrue`, `-odi`, `-oQ/x`.
    fn apply_o(&mut self, value: &str) {
        let mut chars = value.chars();
        match chars.next() {
            Some('i') => {
                let setting = chars.as_str().trim_start_matches('=').to_ascii_lowercase();
                self.ignore_dots =
                    !matches!(setting.as_str(), "f" | "false" | "n" | "no" | "off" | "0");
            }
            _ => self.ignored.push(format!("-o{value}")),
        }
    }

    /// `-q` alone (or `-qR…`, `-qI…`, `-qS…`, `-qf`, `-q!…`) runs the queue; an interval
    /// (`-q30m`) or `-qp…` asks for a queue daemon, which Postfix answers with exit 0.
    fn apply_queue(&mut self, value: &str) {
        self.mode = match value.chars().next() {
            None | Some('R' | 'I' | 'S' | 'f' | '!') => Mode::RunQueue,
            Some(_) => Mode::Noop(format!("-q{value}")),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    /// What a test expects from one command line.
    struct Want {
        mode: Mode,
        t: bool,
        i: bool,
        sender: Option<&'static str>,
        rcpts: &'static [&'static str],
    }

    fn want(
        mode: Mode,
        t: bool,
        i: bool,
        sender: Option<&'static str>,
        rcpts: &'static [&'static str],
    ) -> Want {
        Want {
            mode,
            t,
            i,
            sender,
            rcpts,
        }
    }

    /// The real argv vectors of sendmail-compat.md §4, and a few more.
    #[test]
    fn real_callers() {
        use Mode::*;
        let cases: Vec<(&str, Vec<&str>, Want)> = vec![
            (
                "debian cron",
                vec![
                    "/usr/sbin/sendmail",
                    "-FCronDaemon",
                    "-i",
                    "-B8BITMIME",
                    "-oem",
                    "root",
                ],
                want(Deliver, false, true, None, &["root"]),
            ),
            (
                "debian cron, MAILTO with commas",
                vec![
                    "/usr/sbin/sendmail",
                    "-FCronDaemon",
                    "-i",
                    "-B8BITMIME",
                    "-oem",
                    "a@x,b@y",
                ],
                want(Deliver, false, true, None, &["a@x", "b@y"]),
            ),
            (
                "cronie",
                vec![
                    "/usr/sbin/sendmail",
                    "-FCronDaemon",
                    "-i",
                    "-odi",
                    "-oem",
                    "-oi",
                    "-t",
                    "-f",
                    "root",
                ],
                want(Deliver, true, true, Some("root"), &[]),
            ),
            (
                "systemd-cron",
                vec!["sendmail", "-i", "-B8BITMIME", "admin@x"],
                want(Deliver, false, true, None, &["admin@x"]),
            ),
            (
                "anacron",
                vec!["/usr/sbin/sendmail", "-FAnacron", "-odi", "root"],
                want(Deliver, false, false, None, &["root"]),
            ),
            (
                "atd",
                vec!["sendmail", "-i", "alice"],
                want(Deliver, false, true, None, &["alice"]),
            ),
            (
                "php mail()",
                vec!["/usr/sbin/sendmail", "-t", "-i"],
                want(Deliver, true, true, None, &[]),
            ),
            (
                "php mail() with -f",
                vec!["/usr/sbin/sendmail", "-t", "-i", "-fbounce@x"],
                want(Deliver, true, true, Some("bounce@x"), &[]),
            ),
            (
                "bsd-mailx",
                vec!["sendmail", "-i", "-t", "-f", "me@x"],
                want(Deliver, true, true, Some("me@x"), &[]),
            ),
            (
                "s-nail",
                vec![
                    "sendmail", "-i", "-m", "-v", "-f", "me@x", "--", "a@x", "b@y", "c@z",
                ],
                want(Deliver, false, true, Some("me@x"), &["a@x", "b@y", "c@z"]),
            ),
            (
                "mailutils",
                vec!["sendmail", "-oi", "-f", "root@host", "-t"],
                want(Deliver, true, true, Some("root@host"), &[]),
            ),
            (
                "mutt",
                vec![
                    "/usr/sbin/sendmail",
                    "-oem",
                    "-oi",
                    "-B8BITMIME",
                    "-N",
                    "failure,delay",
                    "-R",
                    "hdrs",
                    "--",
                    "a@x",
                    "Bob <b@y>",
                ],
                want(Deliver, false, true, None, &["a@x", "b@y"]),
            ),
            (
                "mutt with envelope from",
                vec![
                    "/usr/sbin/sendmail",
                    "-oem",
                    "-oi",
                    "-f",
                    "me@x",
                    "--",
                    "a@x",
                ],
                want(Deliver, false, true, Some("me@x"), &["a@x"]),
            ),
            (
                "git send-email",
                vec!["sendmail", "-f", "dev@x", "-i", "maint@x", "list@y"],
                want(Deliver, false, true, Some("dev@x"), &["maint@x", "list@y"]),
            ),
            (
                "logwatch",
                vec!["/usr/sbin/sendmail", "-t"],
                want(Deliver, true, false, None, &[]),
            ),
            (
                "mdadm",
                vec!["/usr/sbin/sendmail", "-t"],
                want(Deliver, true, false, None, &[]),
            ),
            (
                "sudo",
                vec!["/usr/sbin/sendmail", "-t"],
                want(Deliver, true, false, None, &[]),
            ),
            (
                "unattended-upgrades",
                vec!["/usr/sbin/sendmail", "-oi", "-t"],
                want(Deliver, true, true, None, &[]),
            ),
            (
                "fail2ban",
                vec![
                    "/usr/sbin/sendmail",
                    "-f",
                    "fail2ban@host",
                    "root@x, admin@y",
                ],
                want(
                    Deliver,
                    false,
                    false,
                    Some("fail2ban@host"),
                    &["root@x", "admin@y"],
                ),
            ),
            (
                "fail2ban, angle brackets",
                vec!["/usr/sbin/sendmail", "-f", "<fail2ban@host>", "<root@x>"],
                want(Deliver, false, false, Some("fail2ban@host"), &["root@x"]),
            ),
            (
                "rkhunter",
                vec!["/usr/sbin/sendmail", "root@localhost"],
                want(Deliver, false, false, None, &["root@localhost"]),
            ),
            (
                "mime-construct",
                vec!["sendmail", "-oi", "-t", "a@x"],
                want(Deliver, true, true, None, &["a@x"]),
            ),
            (
                "symfony -bs",
                vec!["/usr/sbin/sendmail", "-bs"],
                want(Smtp, false, false, None, &[]),
            ),
            (
                "symfony -t mode",
                vec!["/usr/sbin/sendmail", "-i", "-fsender@x", "--", "r@y"],
                want(Deliver, false, true, Some("sender@x"), &["r@y"]),
            ),
            (
                "laravel",
                vec!["/usr/sbin/sendmail", "-bs", "-i"],
                want(Smtp, false, true, None, &[]),
            ),
            (
                "alpine",
                vec!["/usr/sbin/sendmail", "-bs", "-odb", "-oem"],
                want(Smtp, false, false, None, &[]),
            ),
            (
                "lettre",
                vec!["sendmail", "-i", "-f", "from@x", "--", "to@y"],
                want(Deliver, false, true, Some("from@x"), &["to@y"]),
            ),
            (
                "clustered -ti",
                vec!["sendmail", "-ti"],
                want(Deliver, true, true, None, &[]),
            ),
            (
                "clustered -it",
                vec!["sendmail", "-it"],
                want(Deliver, true, true, None, &[]),
            ),
            (
                "cluster ending in a value",
                vec!["sendmail", "-tif", "x@y"],
                want(Deliver, true, true, Some("x@y"), &[]),
            ),
            (
                "glued -r",
                vec!["sendmail", "-rraid@x", "a"],
                want(Deliver, false, false, Some("raid@x"), &["a"]),
            ),
            (
                "null sender ''",
                vec!["sendmail", "-f", "", "a"],
                want(Deliver, false, false, Some(""), &["a"]),
            ),
            (
                "null sender <>",
                vec!["sendmail", "-f<>", "a"],
                want(Deliver, false, false, Some(""), &["a"]),
            ),
            (
                "-oitrue",
                vec!["sendmail", "-oitrue", "a"],
                want(Deliver, false, true, None, &["a"]),
            ),
            (
                "-oifalse",
                vec!["sendmail", "-i", "-oifalse", "a"],
                want(Deliver, false, false, None, &["a"]),
            ),
            (
                "-o with a separate word",
                vec!["sendmail", "-o", "i", "a"],
                want(Deliver, false, true, None, &["a"]),
            ),
            (
                "-B separate",
                vec!["sendmail", "-B", "8BITMIME", "a"],
                want(Deliver, false, false, None, &["a"]),
            ),
            (
                "-B bogus",
                vec!["sendmail", "-Bbogus", "a"],
                want(Deliver, false, false, None, &["a"]),
            ),
            (
                "-bm",
                vec!["sendmail", "-bm", "a"],
                want(Deliver, false, false, None, &["a"]),
            ),
            (
                "-q does not swallow",
                vec!["sendmail", "-q", "-v"],
                want(RunQueue, false, false, None, &[]),
            ),
            (
                "-qRdomain",
                vec!["sendmail", "-qRexample.com"],
                want(RunQueue, false, false, None, &[]),
            ),
            (
                "-qf",
                vec!["sendmail", "-qf"],
                want(RunQueue, false, false, None, &[]),
            ),
            (
                "-q!R",
                vec!["sendmail", "-q!Rx"],
                want(RunQueue, false, false, None, &[]),
            ),
            (
                "-q30m",
                vec!["sendmail", "-q30m"],
                want(Noop("-q30m".into()), false, false, None, &[]),
            ),
            (
                "-bd -q30m",
                vec!["sendmail", "-bd", "-q30m"],
                want(Noop("-q30m".into()), false, false, None, &[]),
            ),
            (
                "-bp",
                vec!["sendmail", "-bp"],
                want(ListQueue, false, false, None, &[]),
            ),
            (
                "mailq",
                vec!["/usr/bin/mailq"],
                want(ListQueue, false, false, None, &[]),
            ),
            (
                "newaliases",
                vec!["/usr/bin/newaliases"],
                want(NewAliases, false, false, None, &[]),
            ),
            (
                "runq",
                vec!["runq"],
                want(RunQueue, false, false, None, &[]),
            ),
            (
                "rmail",
                vec!["rmail", "bob"],
                want(Deliver, false, true, None, &["bob"]),
            ),
            (
                "-bi",
                vec!["sendmail", "-bi"],
                want(NewAliases, false, false, None, &[]),
            ),
            (
                "-I",
                vec!["sendmail", "-I"],
                want(NewAliases, false, false, None, &[]),
            ),
            (
                "-bv",
                vec!["sendmail", "-bv", "a@x"],
                want(Verify, false, false, None, &["a@x"]),
            ),
            (
                "-bd",
                vec!["sendmail", "-bd"],
                want(Noop("-bd".into()), false, false, None, &[]),
            ),
            (
                "-bH",
                vec!["sendmail", "-bH"],
                want(Noop("-bH".into()), false, false, None, &[]),
            ),
            (
                "unknown letters",
                vec!["sendmail", "-Z", "-K", "a"],
                want(Deliver, false, false, None, &["a"]),
            ),
            (
                "unknown long option",
                vec!["sendmail", "--frobnicate", "a"],
                want(Deliver, false, false, None, &["a"]),
            ),
            (
                "options stop at the first recipient",
                vec!["sendmail", "a", "-t"],
                want(Deliver, false, false, None, &["a", "-t"]),
            ),
            (
                "-- ends options",
                vec!["sendmail", "--", "-weird@x"],
                want(Deliver, false, false, None, &["-weird@x"]),
            ),
            (
                "lone dash",
                vec!["sendmail", "-", "a"],
                want(Deliver, false, false, None, &["a"]),
            ),
            (
                "group recipient",
                vec!["sendmail", "undisclosed-recipients:;"],
                want(Deliver, false, false, None, &[]),
            ),
        ];
        for (label, words, want) in cases {
            let got = parse(&argv(&words)).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(got.mode, want.mode, "{label}: mode");
            assert_eq!(got.extract_recipients, want.t, "{label}: -t");
            assert_eq!(got.ignore_dots, want.i, "{label}: -i");
            assert_eq!(got.sender.as_deref(), want.sender, "{label}: sender");
            assert_eq!(got.recipients, want.rcpts, "{label}: recipients");
        }
    }

    #[test]
    fn values_and_logging() {
        let got = parse(&argv(&[
            "sendmail",
            "-FCron Daemon",
            "-N",
            "never",
            "-Z",
            "--config",
            "/x.conf",
            "a",
        ]))
        .unwrap();
        assert_eq!(got.full_name.as_deref(), Some("Cron Daemon"));
        assert_eq!(got.ignored, vec!["-N never".to_string()]);
        assert_eq!(got.unknown, vec!["-Z".to_string()]);
        assert_eq!(got.config, Some(PathBuf::from("/x.conf")));
        let got = parse(&argv(&["sendmail", "--config=/y.conf", "-vv", "-q"])).unwrap();
        assert_eq!(got.config, Some(PathBuf::from("/y.conf")));
        assert_eq!(got.verbose, 2);
        // -e takes its value (Postfix's getopt says `e:`): `-eq` is not a queue run and
        // `-ep` does not eat the next word as the value of -p.
        for words in [
            &["sendmail", "-eq", "r@x"][..],
            &["sendmail", "-ep", "r@x"],
            &["sendmail", "-e", "m", "r@x"],
        ] {
            let got = parse(&argv(words)).unwrap();
            assert_eq!(
                (&got.mode, &got.recipients[..]),
                (&Mode::Deliver, &["r@x".to_string()][..]),
                "{words:?}"
            );
        }
        assert_eq!(
            parse(&argv(&["sendmail", "--help"])).unwrap().mode,
            Mode::Help
        );
        assert_eq!(
            parse(&argv(&["sendmail", "-i", "--version"])).unwrap().mode,
            Mode::Version
        );
        assert_eq!(
            parse(&argv(&["sendmail", "--helpme"])).unwrap().unknown,
            vec!["--helpme".to_string()]
        );
    }

    #[test]
    fn errors() {
        let cases: &[(&[&str], ArgsError)] = &[
            (&["sendmail", "-bt"], ArgsError::Unsupported("-bt".into())),
            (&["sendmail", "-ba"], ArgsError::Unsupported("-ba".into())),
            (&["sendmail", "-bD"], ArgsError::Unsupported("-bD".into())),
            (&["sendmail", "-bP"], ArgsError::Unsupported("-bP".into())),
            (&["sendmail", "-bz"], ArgsError::Unsupported("-bz".into())),
            (
                &["sendmail", "-t", "-bv", "a"],
                ArgsError::ExtractOutsideDelivery,
            ),
            (
                &["sendmail", "-bv", "-t", "a"],
                ArgsError::ExtractOutsideDelivery,
            ),
            (&["sendmail", "-f"], ArgsError::MissingValue('f')),
            (&["sendmail", "-i", "-o"], ArgsError::MissingValue('o')),
            (&["sendmail", "--config"], ArgsError::MissingConfigPath),
            // mailq_output_injection: control characters in addresses are refused.
            (
                &["sendmail", "-f", "\"a\x1b]0;x\x07\nFAKE\"@x", "r@x"],
                ArgsError::ControlCharacter("sender"),
            ),
            (
                &["sendmail", "-r\"a\x7f\"@x", "r@x"],
                ArgsError::ControlCharacter("sender"),
            ),
            (
                &["sendmail", "-i", "ok@x", "\"b\x1b[2J\"@x"],
                ArgsError::ControlCharacter("recipient"),
            ),
        ];
        for (words, want) in cases {
            assert_eq!(parse(&argv(words)).as_ref().err(), Some(want), "{words:?}");
        }
    }

    #[test]
    fn every_listed_option_parses() {
        for opt in HONOURED_OPTIONS.iter().chain(IGNORED_OPTIONS) {
            let mut words = vec!["sendmail".to_string(), opt.to_string()];
            if opt.len() == 2 && TAKES_VALUE.contains(&opt[1..]) {
                words.push("value".into());
            }
            if *opt == "--config" {
                words.push("/c".into());
            }
            assert!(parse(&words).is_ok(), "{opt}");
        }
    }
}
