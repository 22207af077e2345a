//! Crash safety of the real daemon: kill -9 at random moments while several clients send,
//! round after round, and prove that nothing acknowledged is lost.
//!
//! Each round starts the daemon on the same spool, lets four SMTP clients send messages of
//! random size (each with a unique token in the subject and an end marker as its last line)
//! while `sendmail`, run by an ordinary user with no bridge to reach, drops messages into the maildrop
//! for the daemon to ingest, and
//! kills the daemon with SIGKILL after a random delay drawn from a seeded PRNG (the seed is
//! printed; `SMTP_BRIDGE_CRASH_SEED` replays it). Between the kill and the next start the
//! spool is read as `mailq` and [`Spool`] see it: listing never fails, every entry reads whole
//! (its end marker is there), and every message that got a `250` is either queued or already
//! at the stand-in bridge. After the last round the daemon runs until the queue is empty, and
//! every acknowledged token must have reached the bridge.
//!
//! Duplicates: the only way to send a message twice is a kill after the bridge answered 200
//! and before the queue file was removed. The delivery thread has one request in flight at a
//! time, so each kill can duplicate at most one message that way. Ingesting the maildrop
//! unlinks entries only after their copies in `queue/` are durable (never lose), so a kill in
//! between leaves entries that are both queued and still in the maildrop, and the next
//! ingestion copies them again; the test counts those leftovers while the daemon is dead.
//! Bound asserted: duplicates <= kills + leftovers.
//!
//! `cargo test --test crash` runs 20 rounds; the soak (`cargo test --test crash -- --ignored`)
//! runs `SMTP_BRIDGE_CRASH_ROUNDS` rounds (default 300). Figures go to stderr
//! (`--nocapture`), and into RELIABILITY.md.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::daemon::{simple, Daemon};
use common::{StandInBridge, TestDir};
use smtp_bridge::spool::Spool;

/// The uid `sendmail` runs as: an ordinary user, not the spool's owner (nobody, who would
/// queue directly), so its messages go through the maildrop.
const LOCAL_USER: u32 = 4242;
/// Messages the local client sends at most in one round.
const LOCAL_PER_ROUND: usize = 40;
/// Clients sending at once in each round.
const CLIENTS: usize = 4;
/// Bound for the final drain (the stand-in bridge takes one request at a time).
const DRAIN: Duration = Duration::from_secs(120);

/// splitmix64: small, seedable, good enough to spread kill moments and sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// What the clients saw, shared by their threads.
#[derive(Default)]
struct Ledger {
    /// Tokens whose final dot was sent (some got a 250, some did not).
    sent: Vec<String>,
    /// Tokens that got `250 ... queued as`.
    acked: Vec<String>,
    /// Tokens whose final dot was sent but whose reply never came (the kill came first).
    in_flight: Vec<String>,
    /// Replies to a final dot other than 250 (there must be none).
    refused: Vec<String>,
}

/// How often each token reached the bridge, kept up to date without copying every digest
/// again each time.
#[derive(Default)]
struct Tally {
    seen: usize,
    counts: HashMap<String, usize>,
}

impl Tally {
    fn update(&mut self, bridge: &StandInBridge) {
        let new = bridge.received_from(self.seen);
        self.seen += new.len();
        for r in new {
            let token = token_of(&r.reply).expect("every digest carries its token");
            *self.counts.entry(token).or_default() += 1;
        }
    }
}

/// The figures of one run.
#[derive(Debug, Default)]
struct Figures {
    rounds: usize,
    kills: usize,
    sent: usize,
    acked: usize,
    in_flight: usize,
    delivered: usize,
    duplicates: usize,
    lost: usize,
    queued_at_kill_max: usize,
    delivered_in_flight: usize,
    interrupted_puts: usize,
    temp_files_seen: usize,
    local_acked: usize,
    ingest_leftovers: usize,
    maildrop_at_kills: usize,
}

/// The body of message `token`: `lines` lines of filler, then the end marker.
fn body(token: &str, lines: usize) -> String {
    let mut text = String::with_capacity(lines * 78 + 64);
    for i in 0..lines {
        text.push_str(&format!("{token} line {i:06} {}\r\n", "x".repeat(50)));
    }
    text.push_str(&format!("END-{token}"));
    simple(&format!("crash token {token} ."), &text)
}

/// The token in a digest (from the subject line `crash token TOKEN .`).
fn token_of(text: &str) -> Option<String> {
    let at = text.find("crash token ")? + "crash token ".len();
    let rest = &text[at..];
    Some(rest[..rest.find(' ')?].to_owned())
}

/// One client: sends until its connection dies (the kill) or `stop` is set.
fn client(
    port: u16,
    round: usize,
    n: usize,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    stop: &AtomicBool,
) {
    let mut rng = Rng(seed);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut i = 0;
    'connections: while !stop.load(Ordering::SeqCst) {
        let Ok(mut c) = common::daemon::Smtp::greeted(addr) else {
            return;
        };
        // A few messages per connection, then a new one: both paths get killed mid-way.
        for _ in 0..rng.range(1, 6) {
            if stop.load(Ordering::SeqCst) {
                break 'connections;
            }
            let token = format!("r{round}c{n}m{i}");
            i += 1;
            // Mostly small, sometimes up to ~400 KiB, so that kills land mid-DATA and
            // mid-fsync too.
            let lines = if rng.range(0, 4) == 0 {
                rng.range(500, 5000)
            } else {
                rng.range(0, 40)
            } as usize;
            if c.start_message(&body(&token, lines)).is_err() {
                return;
            }
            // From the final dot on, the daemon may commit it whatever we see next.
            ledger.lock().unwrap().sent.push(token.clone());
            match c.end_message().and_then(|()| c.reply()) {
                Ok((250, text)) if text.contains("queued as") => {
                    ledger.lock().unwrap().acked.push(token)
                }
                Ok((_, text)) => {
                    ledger
                        .lock()
                        .unwrap()
                        .refused
                        .push(format!("{token}: {text}"));
                    return;
                }
                Err(_) => {
                    ledger.lock().unwrap().in_flight.push(token);
                    return;
                }
            }
        }
        let _ = c.cmd("QUIT");
    }
}

/// The local client: `sendmail` run by an ordinary user, with a bridge that is never there (its own
/// config, same spool), so every message goes through the maildrop and the daemon's
/// ingestion. Exit 0 is its acknowledgement. It does not talk to the daemon, so it only
/// stops when told.
fn local_client(shim_config: &Path, round: usize, ledger: Arc<Mutex<Ledger>>, stop: &AtomicBool) {
    // A few dozen per round, so that the maildrop sees ingestion without the local client
    // (a process per message) outrunning delivery round after round.
    for i in 0..LOCAL_PER_ROUND {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let token = format!("r{round}L{i}");
        let message = format!("Subject: crash token {token} .\n\nlocal\nEND-{token}\n");
        ledger.lock().unwrap().sent.push(token.clone());
        let mut child = Command::new(common::sendmail_bin())
            .args(["-i", "root"])
            .env("SMTP_BRIDGE_CONFIG", shim_config)
            .uid(LOCAL_USER)
            .gid(LOCAL_USER)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sendmail");
        let _ = child.stdin.take().unwrap().write_all(message.as_bytes());
        let out = child.wait_with_output().expect("wait for sendmail");
        if out.status.success() {
            ledger.lock().unwrap().acked.push(token);
        } else {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            ledger
                .lock()
                .unwrap()
                .refused
                .push(format!("{token}: sendmail {}: {err}", out.status));
        }
    }
}

/// The tokens of the messages waiting in `maildrop/` (not yet ingested).
fn maildrop_tokens(spool_dir: &Path) -> Vec<String> {
    let Ok(names) = std::fs::read_dir(spool_dir.join("maildrop")) else {
        return Vec::new();
    };
    names
        .filter_map(|e| {
            let e = e.ok()?;
            if e.file_name().to_string_lossy().starts_with(".tmp.") {
                return None;
            }
            token_of(&String::from_utf8_lossy(&std::fs::read(e.path()).ok()?))
        })
        .collect()
}

/// The spool as the tools see it while the daemon is dead: `mailq` succeeds and lists every
/// queued message, and every queue entry reads whole. Returns the queued tokens.
fn check_spool(spool_dir: &std::path::Path, config: &std::path::Path) -> Vec<String> {
    let spool = Spool::new(spool_dir);
    let ids = spool.ids().expect("listing queue/ after a kill");
    let mut tokens = Vec::new();
    for id in &ids {
        let (entry, raw) = spool
            .read(id, 64 << 20)
            .unwrap_or_else(|e| panic!("{id}: queue entry unreadable after a kill: {e}"));
        assert_eq!(raw.len() as u64, entry.size, "{id}: short read");
        let text = String::from_utf8_lossy(&raw);
        let token = token_of(&text).unwrap_or_else(|| panic!("{id}: no token in {text:.200}"));
        assert!(
            [
                format!("END-{token}"),
                format!("END-{token}\n"),
                format!("END-{token}\r\n")
            ]
            .iter()
            .any(|end| text.ends_with(end.as_str())),
            "{id}: queued message {token} is truncated (size {}): ...{}",
            raw.len(),
            &text[text.len().saturating_sub(120)..]
        );
        tokens.push(token);
    }
    let listed = spool.list().expect("Spool::list after a kill");
    assert_eq!(
        listed.len(),
        ids.len(),
        "an entry Spool::list could not parse"
    );
    let out = Command::new(common::sendmail_bin())
        .arg("-bp")
        .env("SMTP_BRIDGE_CONFIG", config)
        .output()
        .expect("run mailq");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mailq failed: {stdout}{stderr}");
    assert!(!stderr.contains("unreadable"), "mailq: {stderr}");
    // mailq ingests the maildrop first, so it lists at least these.
    let listed: HashSet<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for id in &ids {
        assert!(listed.contains(id.0.as_str()), "mailq does not list {id}");
    }
    tokens
}

/// Temporary files (`.tmp.*`) a kill left in `queue/` and `maildrop/`: never listed, and
/// removed by the next start. Anything else there must be a queue ID or its sidecar, a spare
/// file (`queue/.spare.*`, a delivered message's file kept for a new one), or the maildrop's
/// mark (`maildrop/.waiting`).
fn temp_files(spool_dir: &std::path::Path) -> usize {
    let mut temps = 0;
    for area in ["queue", "maildrop"] {
        let Ok(names) = std::fs::read_dir(spool_dir.join(area)) else {
            continue;
        };
        for name in names {
            let name = name.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp.") {
                temps += 1;
            } else if area == "queue" && name.starts_with(".spare.")
                || area == "maildrop" && name == smtp_bridge::spool::MAILDROP_MARK
            {
                continue;
            } else {
                let id = name.split('.').next().unwrap_or("");
                assert!(
                    id.len() == 26 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                    "unexpected file {area}/{name}"
                );
            }
        }
    }
    temps
}

fn crash_rounds(rounds: usize) -> Figures {
    let seed = std::env::var("SMTP_BRIDGE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("crash: seed={seed} (replay with SMTP_BRIDGE_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let bridge = StandInBridge::start();
    let dir = TestDir::new("crash");
    let spool_dir = dir.join("spool");
    let mut port = common::free_port();
    let write = |port: u16| {
        common::write_config(
            &dir.path,
            &bridge.url,
            &format!("listen = [\"127.0.0.1:{port}\"]"),
        )
    };
    let mut config = write(port);
    let shim_config = dir.join("shim.conf");
    std::fs::write(
        &shim_config,
        format!(
            "queue = \"http://127.0.0.1:1/replies\"\nname = \"testhost\"\nspool_dir = \"{}\"\nsendmail_timeout = 1\n",
            spool_dir.display()
        ),
    )
    .unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut tally = Tally::default();
    let mut figures = Figures {
        rounds,
        ..Figures::default()
    };

    let start = |port: &mut u16, config: &mut std::path::PathBuf| -> Daemon {
        // The port was free when picked; another process may have taken it since.
        for _ in 0..5 {
            match Daemon::try_start(config, *port, None, |_| {}) {
                Ok(d) => return d,
                Err(e) if e.status.code() == Some(71) && e.stderr.contains("in use") => {
                    *port = common::free_port();
                    *config = write(*port);
                }
                Err(e) => panic!("daemon exited with {}:\n{}", e.status, e.stderr),
            }
        }
        panic!("no free port after 5 tries");
    };

    // Running sendmail as another user needs root; without it, SMTP clients only.
    // (`require_root` fails under CI=true, so CI always runs the maildrop client.)
    let local = common::require_root();
    if !local {
        eprintln!("crash: not root, so no maildrop client (sendmail as another user)");
    }
    for round in 0..rounds {
        let mut daemon = start(&mut port, &mut config);
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients: Vec<_> = (0..CLIENTS)
            .map(|n| {
                let (ledger, stop, seed) = (ledger.clone(), stop.clone(), rng.next());
                let port = daemon.port;
                thread::spawn(move || client(port, round, n, seed, ledger, &stop))
            })
            .collect();
        if local {
            clients.push({
                let (ledger, stop, shim_config) =
                    (ledger.clone(), stop.clone(), shim_config.clone());
                thread::spawn(move || local_client(&shim_config, round, ledger, &stop))
            });
        }
        // Random moment: early (mid-greeting, mid-first-DATA) to well into the round.
        thread::sleep(Duration::from_millis(rng.range(5, 600)));
        daemon.kill9();
        figures.kills += 1;
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.join().expect("client thread");
        }

        // The daemon is dead: what is on disk is all there is.
        figures.temp_files_seen += temp_files(&spool_dir);
        // Before check_spool: its mailq ingests the maildrop.
        let dropped = maildrop_tokens(&spool_dir);
        let mut queued = check_spool(&spool_dir, &config);
        figures.queued_at_kill_max = figures.queued_at_kill_max.max(queued.len());
        tally.update(&bridge);
        let delivered = &tally.counts;
        // A maildrop entry already copied to the queue (or even delivered) when the kill
        // came: ingestion unlinks entries only once their copies are durable, so the next
        // ingestion copies it again.
        figures.ingest_leftovers += dropped
            .iter()
            .filter(|t| queued.contains(*t) || delivered.contains_key(*t))
            .count();
        figures.maildrop_at_kills += dropped.len();
        queued.extend(dropped);
        let queued: HashSet<String> = queued.into_iter().collect();
        let l = ledger.lock().unwrap();
        assert!(l.refused.is_empty(), "refused: {:?}", l.refused);
        for token in &l.acked {
            assert!(
                queued.contains(token) || delivered.contains_key(token),
                "seed {seed} round {round}: {token} got 250 but is neither queued nor delivered"
            );
        }
    }

    // Last start: let delivery finish, then stop cleanly.
    let mut daemon = start(&mut port, &mut config);
    let l = ledger.lock().unwrap();
    let acked: HashSet<&String> = l.acked.iter().collect();
    // The stand-in bridge takes one request at a time: allow for the backlog.
    let deadline = Instant::now() + DRAIN + Duration::from_millis(20) * l.acked.len() as u32;
    loop {
        tally.update(&bridge);
        let got = &tally.counts;
        let queue_empty = Spool::new(&spool_dir)
            .ids()
            .map(|i| i.is_empty())
            .unwrap_or(false);
        if acked.iter().all(|t| got.contains_key(*t)) && queue_empty {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: delivery did not finish:\n{}",
            daemon.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(daemon.stop().success(), "{}", daemon.log_text());
    // A kill in the middle of a PUT leaves the bridge a short body; anything else would be
    // a broken request.
    let rejections = bridge.rejections();
    assert!(
        rejections
            .iter()
            .all(|r| r == "body shorter than Content-Length"),
        "{rejections:?}"
    );
    figures.interrupted_puts = rejections.len();
    assert!(figures.interrupted_puts <= figures.kills);

    tally.update(&bridge);
    let counts = &tally.counts;
    let sent: HashSet<&String> = l.sent.iter().collect();
    for token in counts.keys() {
        assert!(sent.contains(token), "{token} delivered but never sent");
    }
    figures.sent = l.sent.len();
    figures.acked = l.acked.len();
    figures.local_acked = l.acked.iter().filter(|t| t.contains('L')).count();
    figures.in_flight = l.in_flight.len();
    figures.delivered = counts.len();
    figures.duplicates = counts.values().map(|n| n - 1).sum();
    figures.lost = l.acked.iter().filter(|t| !counts.contains_key(*t)).count();
    figures.delivered_in_flight = l
        .in_flight
        .iter()
        .filter(|t| counts.contains_key(*t))
        .count();
    // Unique tokens, so acked + in flight = sent.
    assert_eq!(figures.acked + figures.in_flight, figures.sent);
    eprintln!(
        "crash figures: seed={seed} rounds={} kills={} sent={} acked={} (by sendmail via the maildrop: {}) in_flight_at_kill={} \
         delivered={} (of which unacknowledged in flight: {}) duplicates={} lost={} \
         max_queued_at_a_kill={} temp_files_seen_after_kills={} puts_cut_by_a_kill={} \
         maildrop_entries_at_kills={} of_which_already_copied={}",
        figures.rounds,
        figures.kills,
        figures.sent,
        figures.acked,
        figures.local_acked,
        figures.in_flight,
        figures.delivered,
        figures.delivered_in_flight,
        figures.duplicates,
        figures.lost,
        figures.queued_at_kill_max,
        figures.temp_files_seen,
        figures.interrupted_puts,
        figures.maildrop_at_kills,
        figures.ingest_leftovers
    );
    assert_eq!(figures.lost, 0, "seed {seed}: {figures:?}");
    // One delivery in flight per kill, plus what a kill left copied but still in the
    // maildrop (each such entry at most once: the copy and the leftover).
    assert!(
        figures.duplicates <= figures.kills + figures.ingest_leftovers,
        "seed {seed}: more duplicates than kills + ingestion leftovers: {figures:?}"
    );
    assert!(
        figures.acked > 0,
        "no message was ever acknowledged: {figures:?}"
    );
    figures
}

#[test]
fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    crash_rounds(20);
}

/// The soak: `SMTP_BRIDGE_CRASH_ROUNDS` rounds (default 300).
#[test]
#[ignore]
fn kill_9_soak() {
    let rounds = std::env::var("SMTP_BRIDGE_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    crash_rounds(rounds);
}
