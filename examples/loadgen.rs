//! The benchmark load generator: drives an SMTP server (smtp_bridge, or Postfix's smtp-sink as
//! the reference) with M concurrent sessions and N messages of S bytes, and prints one
//! machine-readable `key=value` line for `bench/run.sh`.
//!
//! It is a plain blocking client, one thread per session, so that the same program drives
//! every server the same way and the comparison is between the servers, not the clients.
//!
//! Subcommands (every run is bounded in count and in time):
//!
//! - `smtp`: send `--messages N` messages of `--size S` bytes over `--sessions M` sessions,
//!   `--mode reuse` (kept connections, MAIL+RCPT+DATA pipelined when PIPELINING is offered) or
//!   `--mode new` (one connection per message). Counts every reply code; reports accepted
//!   msg/s and the p50/p99 latency from the end-of-data dot to its reply. With `--pid` it
//!   also reads the server's CPU time and peak RSS from `/proc`; with `--sink ADDR` it waits
//!   for the bridge sink to have received every accepted message and reports delivered msg/s
//!   end to end.
//! - `idle`: hold `--connections K` idle sessions (greeted), report the server's RSS growth,
//!   then time how long new clients wait for their greeting.
//! - `exec`: run a command `--count N` times with a file on stdin (the `sendmail` shim) and
//!   report the median wall time.
//! - `fsync --dir D`: time what durability costs on the file system holding `D`: one
//!   message file (write, fdatasync, rename, directory fsync) alone, and batches of
//!   `--batch B` files made durable by serial fdatasyncs, by parallel fdatasyncs, or by one
//!   syncfs, each followed by one directory fsync (the group-commit designs), and, for
//!   comparison with a design we do not have, the batch written in place into a preallocated
//!   log and made durable by one fdatasync (a write-ahead log).
//! - `freeport`: print a loopback port that was free a moment ago.
//! - `wait`: wait until a server at `--addr` greets with 220 (bounded by `--timeout`).
//! - `procstat`: print a process's CPU time and peak RSS.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`): fixed at 100 by the Linux ABI on
/// every architecture this project targets, whatever the kernel's internal `HZ`.
const USER_HZ: f64 = 100.0;

/// How long one read or write may wait before the session is counted as an I/O error.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest reply line accepted from a server; a longer one is a protocol error.
const MAX_REPLY_LINE: usize = 4096;

/// A failure of the load generator itself (not a counted server answer).
#[derive(Debug)]
enum BenchError {
    /// Occurs when the command line is wrong.
    Usage(String),
    /// Occurs when a socket, a file or a child process fails outside a counted session.
    Io(String, io::Error),
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchError::Usage(m) => write!(f, "usage: {m}"),
            BenchError::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BenchError::Io(_, e) => Some(e),
            BenchError::Usage(_) => None,
        }
    }
}

fn usage(e: pico_args::Error) -> BenchError {
    BenchError::Usage(e.to_string())
}

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    let sub = args.subcommand().ok().flatten().unwrap_or_default();
    let result = match sub.as_str() {
        "smtp" => cmd_smtp(args),
        "idle" => cmd_idle(args),
        "exec" => cmd_exec(args),
        "freeport" => cmd_freeport(),
        "fsync" => cmd_fsync(args),
        "wait" => cmd_wait(args),
        "procstat" => cmd_procstat(args),
        _ => Err(BenchError::Usage(
            "loadgen smtp|idle|exec|freeport|wait|procstat [options] (see the file's header)"
                .into(),
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- /proc readings

/// What `/proc/PID` tells about a server process.
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    /// CPU time of every thread, in seconds (the process CPU clock; utime + stime where it
    /// cannot be read).
    cpu_s: f64,
    /// VmHWM in KiB (peak resident set).
    hwm_kb: u64,
    /// VmRSS in KiB.
    rss_kb: u64,
}

fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // The process's CPU clock counts nanoseconds; utime and stime count 10 ms ticks, which
    // over a one-second run is ±0.002 ms per message per thread.
    let cpu_s = nix::time::clock_getcpuclockid(nix::unistd::Pid::from_raw(pid as i32))
        .and_then(nix::time::clock_gettime)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or((utime + stime) / USER_HZ);
    Some(ProcSample {
        cpu_s,
        hwm_kb: kb("VmHWM:"),
        rss_kb: kb("VmRSS:"),
    })
}

/// CPU seconds per thread name (`comm`) of a process, summed over threads of one name.
/// Threads that exited in between are missing from the later sample, so this is a
/// breakdown of where the time went, while [`proc_sample`] holds the exact total.
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].replace([' ', '/', ':', ','], "_");
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks: f64 = fields
            .get(11)
            .and_then(|u| u.parse::<f64>().ok())
            .unwrap_or(0.0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0);
        *out.entry(name).or_insert(0.0) += ticks / USER_HZ;
    }
    out
}

fn cmd_procstat(mut args: pico_args::Arguments) -> Result<(), BenchError> {
    let pid: u32 = args.value_from_str("--pid").map_err(usage)?;
    let s = proc_sample(pid).ok_or_else(|| {
        BenchError::Io(
            format!("/proc/{pid}"),
            io::Error::new(io::ErrorKind::NotFound, "no such process"),
        )
    })?;
    println!(
        "pid={pid} cpu_s={:.3} hwm_kb={} rss_kb={}",
        s.cpu_s, s.hwm_kb, s.rss_kb
    );
    Ok(())
}

// ---------------------------------------------------------------- SMTP client pieces

/// A reply: its code and the text of its last line.
struct Reply {
    code: u16,
    text: String,
}

/// Counts of every reply code seen, indexed by code (100..=599).
#[derive(Clone)]
struct Codes([u64; 600]);

impl Codes {
    fn new() -> Codes {
        Codes([0; 600])
    }
    fn add(&mut self, code: u16) {
        if let Some(c) = self.0.get_mut(code as usize) {
            *c += 1;
        }
    }
    fn merge(&mut self, other: &Codes) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
    fn render(&self) -> String {
        let mut out = String::new();
        for (code, n) in self.0.iter().enumerate() {
            if *n > 0 {
                if !out.is_empty() {
                    out.push(',');
                }
                let _ = write!(out, "{code}:{n}");
            }
        }
        if out.is_empty() {
            out.push_str("none");
        }
        out
    }
}

/// One SMTP connection with a buffered reader and the extensions the server offered.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    pipelining: bool,
    size: bool,
}

fn protocol_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn read_reply(reader: &mut BufReader<TcpStream>, codes: &mut Codes) -> io::Result<Reply> {
    let mut line = Vec::with_capacity(128);
    loop {
        line.clear();
        let n = reader
            .by_ref()
            .take(MAX_REPLY_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        if line.len() < 4 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(protocol_error(format!(
                "bad reply line {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        if line[3] == b'-' {
            continue;
        }
        let code =
            (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
        codes.add(code);
        let text = String::from_utf8_lossy(&line[4..]).trim_end().to_string();
        return Ok(Reply { code, text });
    }
}

/// Reads a multi-line EHLO reply, noting the extensions that matter.
fn read_ehlo(conn: &mut Conn, codes: &mut Codes) -> io::Result<u16> {
    let mut line = Vec::with_capacity(128);
    loop {
        line.clear();
        let n = conn
            .reader
            .by_ref()
            .take(MAX_REPLY_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        if line.len() < 4 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(protocol_error(format!(
                "bad EHLO line {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        let keyword = String::from_utf8_lossy(&line[4..]).to_ascii_uppercase();
        let keyword = keyword.trim();
        if keyword == "PIPELINING" {
            conn.pipelining = true;
        }
        if keyword == "SIZE" || keyword.starts_with("SIZE ") {
            conn.size = true;
        }
        if line[3] != b'-' {
            let code = (line[0] - b'0') as u16 * 100
                + (line[1] - b'0') as u16 * 10
                + (line[2] - b'0') as u16;
            codes.add(code);
            return Ok(code);
        }
    }
}

/// Connects, reads the greeting and says EHLO. `Ok(None)` when the server refused us with
/// a non-220 greeting (counted).
fn open_session(addr: SocketAddr, codes: &mut Codes) -> io::Result<Option<Conn>> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let writer = stream.try_clone()?;
    let mut conn = Conn {
        reader: BufReader::with_capacity(16 * 1024, stream),
        writer,
        pipelining: false,
        size: false,
    };
    let greeting = read_reply(&mut conn.reader, codes)?;
    if greeting.code != 220 {
        return Ok(None);
    }
    conn.writer.write_all(b"EHLO loadgen.localhost\r\n")?;
    if read_ehlo(&mut conn, codes)? != 250 {
        return Ok(None);
    }
    Ok(Some(conn))
}

fn close_session(mut conn: Conn, codes: &mut Codes) {
    if conn.writer.write_all(b"QUIT\r\n").is_ok() {
        let _ = read_reply(&mut conn.reader, codes);
    }
}

/// The messages a session sends: headers built per message, the body from a shared block
/// of text lines so that a 20 MiB message never sits in memory.
struct MessageShape {
    size: usize,
    /// 64 KiB of whole `CRLF`-terminated lines; no line starts with a dot, so nothing needs
    /// dot-stuffing and every server reads exactly `size` bytes.
    block: Vec<u8>,
}

impl MessageShape {
    fn new(size: usize) -> MessageShape {
        let line =
            b"The quick brown fox jumps over the lazy dog; benchmark payload text 0123456\r\n";
        let mut block = Vec::with_capacity(64 * 1024);
        while block.len() + line.len() <= 64 * 1024 {
            block.extend_from_slice(line);
        }
        MessageShape { size, block }
    }

    fn header(&self, index: usize) -> Vec<u8> {
        format!(
            "From: Load Generator <loadgen@localhost>\r\nTo: sink@localhost\r\n\
             Subject: benchmark message {index}\r\nDate: Tue, 24 Nov 2026 14:00:00 +0000\r\n\
             Message-ID: <loadgen.{index}.{}@localhost>\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\r\n",
            std::process::id()
        )
        .into_bytes()
    }

    /// Writes message `index` followed by the end-of-data dot. Small messages go out in one
    /// write so the timing starts with the whole message in the kernel.
    fn write(&self, index: usize, w: &mut TcpStream, scratch: &mut Vec<u8>) -> io::Result<()> {
        let header = self.header(index);
        let body_len = self.size.saturating_sub(header.len());
        let full = body_len / self.block.len();
        let rem = body_len % self.block.len();
        scratch.clear();
        scratch.extend_from_slice(&header);
        for _ in 0..full {
            if scratch.len() >= 256 * 1024 {
                w.write_all(scratch)?;
                scratch.clear();
            }
            scratch.extend_from_slice(&self.block);
        }
        let start = scratch.len();
        scratch.extend_from_slice(&self.block[..rem]);
        // End the last (cut) line properly so the dot stands on a line of its own.
        if rem >= 2 {
            let end = scratch.len();
            scratch[end - 2..].copy_from_slice(b"\r\n");
        } else if rem == 1 {
            scratch.truncate(start);
            scratch.push(b'\n');
        }
        scratch.extend_from_slice(b".\r\n");
        w.write_all(scratch)
    }
}

/// What one transaction came to.
enum Outcome {
    /// 250 after the dot, with the dot-to-250 latency.
    Accepted(Duration),
    /// Any other final answer (counted in the codes).
    Refused,
}

fn transaction(
    conn: &mut Conn,
    shape: &MessageShape,
    index: usize,
    codes: &mut Codes,
    scratch: &mut Vec<u8>,
) -> io::Result<Outcome> {
    let mail = if conn.size {
        format!("MAIL FROM:<loadgen@localhost> SIZE={}\r\n", shape.size)
    } else {
        "MAIL FROM:<loadgen@localhost>\r\n".to_string()
    };
    let rcpt = "RCPT TO:<sink@localhost>\r\n";
    let (mail_r, rcpt_r, data_r) = if conn.pipelining {
        let group = format!("{mail}{rcpt}DATA\r\n");
        conn.writer.write_all(group.as_bytes())?;
        let m = read_reply(&mut conn.reader, codes)?;
        let r = read_reply(&mut conn.reader, codes)?;
        let d = read_reply(&mut conn.reader, codes)?;
        (m.code, r.code, d.code)
    } else {
        conn.writer.write_all(mail.as_bytes())?;
        let m = read_reply(&mut conn.reader, codes)?;
        if m.code != 250 {
            return abort(conn, codes);
        }
        conn.writer.write_all(rcpt.as_bytes())?;
        let r = read_reply(&mut conn.reader, codes)?;
        if r.code != 250 {
            return abort(conn, codes);
        }
        conn.writer.write_all(b"DATA\r\n")?;
        let d = read_reply(&mut conn.reader, codes)?;
        (m.code, r.code, d.code)
    };
    if data_r != 354 {
        return abort(conn, codes);
    }
    shape.write(index, &mut conn.writer, scratch)?;
    let dot = Instant::now();
    let end = read_reply(&mut conn.reader, codes)?;
    let latency = dot.elapsed();
    if end.code == 250 && mail_r == 250 && rcpt_r == 250 {
        Ok(Outcome::Accepted(latency))
    } else {
        if end.code != 250 {
            eprintln!("loadgen: message {index}: {} {}", end.code, end.text);
        }
        Ok(Outcome::Refused)
    }
}

fn abort(conn: &mut Conn, codes: &mut Codes) -> io::Result<Outcome> {
    conn.writer.write_all(b"RSET\r\n")?;
    read_reply(&mut conn.reader, codes)?;
    Ok(Outcome::Refused)
}

/// What every session thread hands back.
struct SessionResult {
    codes: Codes,
    latencies_us: Vec<u64>,
    accepted: u64,
    refused: u64,
    io_errors: u64,
    connections: u64,
    last_250: Option<Instant>,
}

/// Takes the next message index, or `None` when all were handed out or time is up.
fn next_index(counter: &AtomicUsize, total: usize, deadline: Instant) -> Option<usize> {
    if Instant::now() > deadline {
        return None;
    }
    let i = counter.fetch_add(1, Ordering::Relaxed);
    (i < total).then_some(i)
}

fn session_thread(
    addr: SocketAddr,
    reuse: bool,
    shape: Arc<MessageShape>,
    counter: Arc<AtomicUsize>,
    total: usize,
    deadline: Instant,
) -> SessionResult {
    let mut res = SessionResult {
        codes: Codes::new(),
        latencies_us: Vec::new(),
        accepted: 0,
        refused: 0,
        io_errors: 0,
        connections: 0,
        last_250: None,
    };
    let mut scratch = Vec::with_capacity(shape.size.min(512 * 1024) + 1024);
    let mut conn: Option<Conn> = None;
    while let Some(index) = next_index(&counter, total, deadline) {
        if conn.is_none() {
            res.connections += 1;
            match open_session(addr, &mut res.codes) {
                Ok(Some(c)) => conn = Some(c),
                Ok(None) => {
                    res.refused += 1;
                    continue;
                }
                Err(e) => {
                    eprintln!("loadgen: connect/greeting: {e}");
                    res.io_errors += 1;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match transaction(c, &shape, index, &mut res.codes, &mut scratch) {
            Ok(Outcome::Accepted(lat)) => {
                res.accepted += 1;
                res.latencies_us.push(lat.as_micros() as u64);
                res.last_250 = Some(Instant::now());
            }
            Ok(Outcome::Refused) => res.refused += 1,
            Err(e) => {
                eprintln!("loadgen: message {index}: {e}");
                res.io_errors += 1;
                conn = None;
                continue;
            }
        }
        if !reuse {
            if let Some(c) = conn.take() {
                close_session(c, &mut res.codes);
            }
        }
    }
    if let Some(c) = conn.take() {
        close_session(c, &mut res.codes);
    }
    res
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank: the smallest value with at least p% of the samples at or below it.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// The counters the bridge sink reports on `GET /stats`.
#[derive(Debug, Clone, Copy, Default)]
struct SinkStats {
    count: u64,
    rejected: u64,
    last_ns: u128,
    /// CPU time the sink has used so far (0 from a sink that does not say).
    cpu_ns: u128,
}

fn sink_stats(addr: SocketAddr) -> io::Result<SinkStats> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"GET /stats HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    s.take(64 * 1024).read_to_string(&mut text)?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| protocol_error("sink: no HTTP body".into()))?;
    let mut st = SinkStats::default();
    for kv in body.split_whitespace() {
        match kv.split_once('=') {
            Some(("count", v)) => st.count = v.parse().unwrap_or(0),
            Some(("rejected", v)) => st.rejected = v.parse().unwrap_or(0),
            Some(("last_ns", v)) => st.last_ns = v.parse().unwrap_or(0),
            Some(("cpu_ns", v)) => st.cpu_ns = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    Ok(st)
}

fn parse_addr(s: &str) -> Result<SocketAddr, BenchError> {
    s.parse()
        .map_err(|e| BenchError::Usage(format!("bad address {s:?}: {e}")))
}

fn cmd_smtp(mut args: pico_args::Arguments) -> Result<(), BenchError> {
    let addr = parse_addr(&args.value_from_str::<_, String>("--addr").map_err(usage)?)?;
    let sessions: usize = args
        .opt_value_from_str("--sessions")
        .map_err(usage)?
        .unwrap_or(20);
    let messages: usize = args
        .opt_value_from_str("--messages")
        .map_err(usage)?
        .unwrap_or(1000);
    let size: usize = args
        .opt_value_from_str("--size")
        .map_err(usage)?
        .unwrap_or(1024);
    let mode: String = args
        .opt_value_from_str("--mode")
        .map_err(usage)?
        .unwrap_or("reuse".into());
    let pid: Option<u32> = args.opt_value_from_str("--pid").map_err(usage)?;
    let sink: Option<String> = args.opt_value_from_str("--sink").map_err(usage)?;
    let timeout: u64 = args
        .opt_value_from_str("--timeout")
        .map_err(usage)?
        .unwrap_or(120);
    let label: String = args
        .opt_value_from_str("--label")
        .map_err(usage)?
        .unwrap_or("-".into());
    let deliver_timeout: u64 = args
        .opt_value_from_str("--deliver-timeout")
        .map_err(usage)?
        .unwrap_or(60);
    let reuse = match mode.as_str() {
        "reuse" => true,
        "new" => false,
        other => {
            return Err(BenchError::Usage(format!(
                "--mode reuse|new, not {other:?}"
            )))
        }
    };
    if sessions == 0 || sessions > 2000 || size < 512 {
        return Err(BenchError::Usage(
            "--sessions 1..=2000, --size >= 512".into(),
        ));
    }
    let sink = sink.map(|s| parse_addr(&s)).transpose()?;
    let sink_before = match sink {
        Some(a) => Some(sink_stats(a).map_err(|e| BenchError::Io("bridge sink".into(), e))?),
        None => None,
    };

    let shape = Arc::new(MessageShape::new(size));
    let counter = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let proc_before = pid.and_then(proc_sample);
    let threads_before = pid.map(thread_cpu).unwrap_or_default();
    let start_ns = now_ns();
    let start = Instant::now();
    let cpu_before = self_cpu();
    let mut handles = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let (shape, counter) = (shape.clone(), counter.clone());
        handles.push(
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || session_thread(addr, reuse, shape, counter, messages, deadline))
                .map_err(|e| BenchError::Io("spawn session thread".into(), e))?,
        );
    }
    let mut codes = Codes::new();
    let mut lat = Vec::with_capacity(messages);
    let (mut accepted, mut refused, mut io_errors, mut connections) = (0u64, 0u64, 0u64, 0u64);
    let mut last_250 = start;
    for h in handles {
        let r = h
            .join()
            .map_err(|_| BenchError::Usage("a session thread panicked".into()))?;
        codes.merge(&r.codes);
        lat.extend_from_slice(&r.latencies_us);
        accepted += r.accepted;
        refused += r.refused;
        io_errors += r.io_errors;
        connections += r.connections;
        if let Some(t) = r.last_250 {
            last_250 = last_250.max(t);
        }
    }
    let elapsed = last_250.duration_since(start).as_secs_f64();
    let proc_after_accept = pid.and_then(proc_sample);
    // The load generator's own CPU for the SMTP side (not its polling of the sink below).
    let client_cpu = self_cpu() - cpu_before;
    lat.sort_unstable();

    let mut line = format!(
        "label={label} cmd=smtp mode={mode} sessions={sessions} messages={messages} size={size} \
         accepted={accepted} refused={refused} io_errors={io_errors} connections={connections} \
         elapsed_s={elapsed:.4} accepted_per_s={:.1} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} replies={} \
         client_cpu_ms_per_msg={:.4}",
        if elapsed > 0.0 { accepted as f64 / elapsed } else { 0.0 },
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().map(|v| *v as f64 / 1000.0).unwrap_or(f64::NAN),
        codes.render(),
        if accepted > 0 { client_cpu * 1000.0 / accepted as f64 } else { f64::NAN },
    );

    // End to end: wait (bounded) until the sink holds every accepted message.
    let mut proc_end = proc_after_accept;
    if let (Some(addr), Some(before)) = (sink, sink_before) {
        let want = before.count + accepted;
        let mut st = before;
        let deliver_deadline = Instant::now() + Duration::from_secs(deliver_timeout);
        while st.count < want && Instant::now() < deliver_deadline {
            thread::sleep(Duration::from_millis(20));
            st = sink_stats(addr).map_err(|e| BenchError::Io("bridge sink".into(), e))?;
        }
        proc_end = pid.and_then(proc_sample);
        let delivered = st.count - before.count;
        let span = (st.last_ns.saturating_sub(start_ns)) as f64 / 1e9;
        let _ = write!(
            line,
            " delivered={delivered} sink_rejected={} delivered_elapsed_s={span:.4} delivered_per_s={:.1}",
            st.rejected - before.rejected,
            if delivered == accepted && span > 0.0 { delivered as f64 / span } else { 0.0 }
        );
        if before.cpu_ns > 0 && delivered > 0 {
            // What the deliveries cost the sink (plus this loop's few GET /stats).
            let _ = write!(
                line,
                " sink_cpu_ms_per_msg={:.4}",
                st.cpu_ns.saturating_sub(before.cpu_ns) as f64 / 1e6 / delivered as f64
            );
        }
    }
    if let (Some(b), Some(a), Some(e)) = (proc_before, proc_after_accept, proc_end) {
        let per = |cpu: f64| {
            if accepted > 0 {
                cpu * 1000.0 / accepted as f64
            } else {
                f64::NAN
            }
        };
        let _ = write!(
            line,
            " server_cpu_s={:.3} server_cpu_ms_per_msg={:.4} server_cpu_ms_per_msg_accept={:.4} \
             server_hwm_kb={} server_rss_kb={}",
            e.cpu_s - b.cpu_s,
            per(e.cpu_s - b.cpu_s),
            per(a.cpu_s - b.cpu_s),
            e.hwm_kb,
            e.rss_kb
        );
        if accepted > 0 {
            let after = pid.map(thread_cpu).unwrap_or_default();
            let parts: Vec<String> = after
                .iter()
                .map(|(name, cpu)| {
                    let before = threads_before.get(name).copied().unwrap_or(0.0);
                    format!("{name}:{:.4}", (cpu - before) * 1000.0 / accepted as f64)
                })
                .collect();
            let _ = write!(line, " server_thread_ms_per_msg={}", parts.join(","));
        }
    }
    println!("{line}");
    Ok(())
}

// ---------------------------------------------------------------- idle connections

fn greet_time(addr: SocketAddr, codes: &mut Codes) -> io::Result<(Duration, u16)> {
    let t = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let r = read_reply(&mut reader, codes)?;
    let took = t.elapsed();
    let _ = writer.write_all(b"QUIT\r\n");
    let _ = read_reply(&mut reader, codes);
    Ok((took, r.code))
}

fn cmd_idle(mut args: pico_args::Arguments) -> Result<(), BenchError> {
    let addr = parse_addr(&args.value_from_str::<_, String>("--addr").map_err(usage)?)?;
    let count: usize = args
        .opt_value_from_str("--connections")
        .map_err(usage)?
        .unwrap_or(1000);
    let probes: usize = args
        .opt_value_from_str("--probes")
        .map_err(usage)?
        .unwrap_or(20);
    let pid: Option<u32> = args.opt_value_from_str("--pid").map_err(usage)?;
    let label: String = args
        .opt_value_from_str("--label")
        .map_err(usage)?
        .unwrap_or("-".into());
    if count > 10_000 || probes == 0 || probes > 1000 {
        return Err(BenchError::Usage(
            "--connections <= 10000, --probes 1..=1000".into(),
        ));
    }
    let mut codes = Codes::new();
    let before = pid.and_then(proc_sample);
    let mut held = Vec::with_capacity(count);
    let mut greeted = 0u64;
    let mut errors = 0u64;
    let mut consecutive_failures = 0;
    for _ in 0..count {
        // A server that stopped greeting is full: holding more would only add timeouts.
        if consecutive_failures >= 3 {
            break;
        }
        let before_errors = errors;
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(s) => {
                // Short: a server that cannot greet an idle client in 2 s has failed the measure.
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut reader = BufReader::with_capacity(512, s);
                match read_reply(&mut reader, &mut codes) {
                    Ok(r) if r.code == 220 => greeted += 1,
                    Ok(_) => {}
                    Err(e) => {
                        errors += 1;
                        if errors <= 5 {
                            eprintln!("loadgen: idle connection greeting: {e}");
                        }
                    }
                }
                held.push(reader);
            }
            Err(e) => {
                errors += 1;
                if errors <= 5 {
                    eprintln!("loadgen: idle connection: {e}");
                }
            }
        }
        consecutive_failures = if errors > before_errors {
            consecutive_failures + 1
        } else {
            0
        };
    }
    // Let the server settle (lazy allocations, timers) before reading its RSS.
    thread::sleep(Duration::from_millis(300));
    let after = pid.and_then(proc_sample);
    let mut times = Vec::with_capacity(probes);
    let mut probe_codes = Codes::new();
    for _ in 0..probes {
        match greet_time(addr, &mut probe_codes) {
            Ok((t, 220)) => times.push(t.as_micros() as u64),
            Ok(_) | Err(_) => errors += 1,
        }
        thread::sleep(Duration::from_millis(10));
    }
    codes.merge(&probe_codes);
    times.sort_unstable();
    let mut line = format!(
        "label={label} cmd=idle connections={count} greeted={greeted} errors={errors} \
         greet_p50_ms={:.3} greet_max_ms={:.3} probes_ok={} replies={}",
        percentile(&times, 50.0),
        times.last().map(|v| *v as f64 / 1000.0).unwrap_or(f64::NAN),
        times.len(),
        codes.render()
    );
    if let (Some(b), Some(a)) = (before, after) {
        let _ = write!(
            line,
            " server_rss_before_kb={} server_rss_idle_kb={} server_rss_delta_kb={} server_hwm_kb={}",
            b.rss_kb,
            a.rss_kb,
            a.rss_kb as i64 - b.rss_kb as i64,
            a.hwm_kb
        );
    }
    drop(held);
    println!("{line}");
    Ok(())
}

// ---------------------------------------------------------------- exec (the shim)

fn cmd_exec(mut args: pico_args::Arguments) -> Result<(), BenchError> {
    let count: usize = args
        .opt_value_from_str("--count")
        .map_err(usage)?
        .unwrap_or(100);
    let input: String = args.value_from_str("--input").map_err(usage)?;
    let label: String = args
        .opt_value_from_str("--label")
        .map_err(usage)?
        .unwrap_or("-".into());
    let sink: Option<String> = args.opt_value_from_str("--sink").map_err(usage)?;
    let rest = args.finish();
    let argv: Vec<String> = rest
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .skip_while(|s| s == "--")
        .collect();
    let Some((program, prog_args)) = argv.split_first() else {
        return Err(BenchError::Usage("exec ... -- PROGRAM ARGS".into()));
    };
    if count == 0 || count > 100_000 {
        return Err(BenchError::Usage("--count 1..=100000".into()));
    }
    let sink = sink.map(|s| parse_addr(&s)).transpose()?;
    let before = match sink {
        Some(a) => Some(sink_stats(a).map_err(|e| BenchError::Io("bridge sink".into(), e))?),
        None => None,
    };
    let mut times = Vec::with_capacity(count);
    let mut failures = 0u64;
    for _ in 0..count {
        let stdin = File::open(&input).map_err(|e| BenchError::Io(input.clone(), e))?;
        let t = Instant::now();
        let status = Command::new(program)
            .args(prog_args)
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::null())
            .status()
            .map_err(|e| BenchError::Io(program.clone(), e))?;
        let took = t.elapsed();
        if status.success() {
            times.push(took.as_micros() as u64);
        } else {
            failures += 1;
        }
    }
    times.sort_unstable();
    let mut line = format!(
        "label={label} cmd=exec count={count} ok={} failures={failures} wall_p50_ms={:.3} \
         wall_p99_ms={:.3} wall_mean_ms={:.3}",
        times.len(),
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        if times.is_empty() {
            f64::NAN
        } else {
            times.iter().sum::<u64>() as f64 / times.len() as f64 / 1000.0
        }
    );
    if let (Some(a), Some(b)) = (sink, before) {
        // The shim hands each message to the bridge before it exits: all must be there.
        let st = sink_stats(a).map_err(|e| BenchError::Io("bridge sink".into(), e))?;
        let _ = write!(
            line,
            " delivered={} sink_rejected={}",
            st.count - b.count,
            st.rejected - b.rejected
        );
    }
    println!("{line}");
    Ok(())
}

// ---------------------------------------------------------------- small helpers

fn cmd_freeport() -> Result<(), BenchError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::Io("bind".into(), e))?;
    let port = l
        .local_addr()
        .map_err(|e| BenchError::Io("local_addr".into(), e))?
        .port();
    println!("{port}");
    Ok(())
}

fn cmd_wait(mut args: pico_args::Arguments) -> Result<(), BenchError> {
    let addr = parse_addr(&args.value_from_str::<_, String>("--addr").map_err(usage)?)?;
    let timeout: f64 = args
        .opt_value_from_str("--timeout")
        .map_err(usage)?
        .unwrap_or(10.0);
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    let mut why = String::new();
    while Instant::now() < deadline {
        let mut codes = Codes::new();
        match greet_time(addr, &mut codes) {
            Ok((_, 220)) => return Ok(()),
            Ok((_, code)) => why = format!("greeting {code}"),
            Err(e) => why = e.to_string(),
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(BenchError::Io(
        format!("no 220 from {addr} within {timeout} s"),
        io::Error::new(io::ErrorKind::TimedOut, why),
    ))
}

// ---------------------------------------------------------------- fsync costs

/// CPU seconds (user + system) this process has used, all threads included.
fn self_cpu() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => 0.0,
    }
}

/// The slowest of `v` below the top 1% (nearest rank): the tail a p99 latency meets.
fn p99_ms(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (0.99 * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn fsync_dir(dir: &std::path::Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `count` temporary files of `size` bytes in `dir`, unsynced.
fn write_files(
    dir: &std::path::Path,
    tag: &str,
    count: usize,
    data: &[u8],
) -> io::Result<Vec<(File, std::path::PathBuf)>> {
    let mut files = Vec::with_capacity(count);
    for i in 0..count {
        let path = dir.join(format!("tmp.{tag}.{i}"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        f.write_all(data)?;
        files.push((f, path));
    }
    Ok(files)
}

fn rename_all(
    dir: &std::path::Path,
    tag: &str,
    files: &[(File, std::path::PathBuf)],
) -> io::Result<()> {
    for (i, (_, path)) in files.iter().enumerate() {
        std::fs::rename(path, dir.join(format!("q.{tag}.{i}")))?;
    }
    Ok(())
}

fn cmd_fsync(mut args: pico_args::Arguments) -> Result<(), BenchError> {
    let dir: String = args.value_from_str("--dir").map_err(usage)?;
    let rounds: usize = args
        .opt_value_from_str("--rounds")
        .map_err(usage)?
        .unwrap_or(20);
    let batch: usize = args
        .opt_value_from_str("--batch")
        .map_err(usage)?
        .unwrap_or(20);
    let size: usize = args
        .opt_value_from_str("--size")
        .map_err(usage)?
        .unwrap_or(1024);
    let label: String = args
        .opt_value_from_str("--label")
        .map_err(usage)?
        .unwrap_or("-".into());
    if rounds == 0 || rounds > 1000 || batch == 0 || batch > 256 || size > 1 << 20 {
        return Err(BenchError::Usage(
            "--rounds 1..=1000 --batch 1..=256 --size <= 1 MiB".into(),
        ));
    }
    let dir = std::path::PathBuf::from(dir);
    let io_err = |e: io::Error| BenchError::Io(format!("fsync test in {}", dir.display()), e);
    std::fs::create_dir_all(&dir).map_err(io_err)?;
    let data = vec![b'x'; size];
    let (mut single, mut serial, mut parallel, mut syncfs) = (vec![], vec![], vec![], vec![]);
    let mut journal = vec![];
    // CPU seconds (user + system, all threads) spent in each strategy.
    let mut cpu = [0.0f64; 5];
    // A write-ahead log, which smtp_bridge does not have: a preallocated file, written and
    // synced once, so that a batch written in place changes no metadata and one fdatasync
    // carries only data. What such a design could reach on this disk.
    let log_path = dir.join("journal");
    let log_len = batch * size;
    let log = {
        let mut f = File::create(&log_path).map_err(io_err)?;
        for _ in 0..rounds {
            f.write_all(&vec![0u8; log_len]).map_err(io_err)?;
        }
        f.sync_all().map_err(io_err)?;
        f
    };
    for round in 0..rounds {
        let c0 = self_cpu();
        // One message alone: what every 250 costs without group commit.
        let t = Instant::now();
        let files = write_files(&dir, &format!("s{round}"), 1, &data).map_err(io_err)?;
        files[0].0.sync_data().map_err(io_err)?;
        rename_all(&dir, &format!("s{round}"), &files).map_err(io_err)?;
        fsync_dir(&dir).map_err(io_err)?;
        single.push(t.elapsed().as_secs_f64() * 1000.0);
        let c1 = self_cpu();
        cpu[0] += c1 - c0;

        // A batch, fdatasync'd one after the other (the spool worker's way today).
        let t = Instant::now();
        let tag = format!("a{round}");
        let files = write_files(&dir, &tag, batch, &data).map_err(io_err)?;
        for (f, _) in &files {
            f.sync_data().map_err(io_err)?;
        }
        rename_all(&dir, &tag, &files).map_err(io_err)?;
        fsync_dir(&dir).map_err(io_err)?;
        serial.push(t.elapsed().as_secs_f64() * 1000.0);
        let c2 = self_cpu();
        cpu[1] += c2 - c1;

        // A batch, fdatasync'd concurrently: the journal folds them into a few commits.
        let t = Instant::now();
        let tag = format!("b{round}");
        let files = write_files(&dir, &tag, batch, &data).map_err(io_err)?;
        let results: Vec<io::Result<()>> = thread::scope(|s| {
            let hs: Vec<_> = files
                .iter()
                .map(|(f, _)| s.spawn(move || f.sync_data()))
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("sync thread panicked")))
                })
                .collect()
        });
        for r in results {
            r.map_err(io_err)?;
        }
        rename_all(&dir, &tag, &files).map_err(io_err)?;
        fsync_dir(&dir).map_err(io_err)?;
        parallel.push(t.elapsed().as_secs_f64() * 1000.0);
        let c3 = self_cpu();
        cpu[2] += c3 - c2;

        // A batch whose data one syncfs of the spool's file system makes durable, then
        // renamed and one directory fsync (the daemon's spool_sync = "filesystem").
        let t = Instant::now();
        let tag = format!("c{round}");
        let files = write_files(&dir, &tag, batch, &data).map_err(io_err)?;
        nix::unistd::syncfs(&files[0].0).map_err(|e| io_err(io::Error::from(e)))?;
        rename_all(&dir, &tag, &files).map_err(io_err)?;
        fsync_dir(&dir).map_err(io_err)?;
        syncfs.push(t.elapsed().as_secs_f64() * 1000.0);
        let c4 = self_cpu();
        cpu[3] += c4 - c3;

        // The same batch appended in place to the preallocated log, one fdatasync.
        let t = Instant::now();
        let mut chunk = Vec::with_capacity(log_len);
        for _ in 0..batch {
            chunk.extend_from_slice(&data);
        }
        {
            use std::os::unix::fs::FileExt;
            log.write_all_at(&chunk, (round * log_len) as u64)
                .map_err(io_err)?;
        }
        log.sync_data().map_err(io_err)?;
        journal.push(t.elapsed().as_secs_f64() * 1000.0);
        cpu[4] += self_cpu() - c4;

        for entry in std::fs::read_dir(&dir).map_err(io_err)?.flatten() {
            if entry.path() != log_path {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    drop(log);
    let _ = std::fs::remove_file(&log_path);
    // Bulk: how fast this disk takes a large message durably (write, then one fdatasync).
    let bulk_mib = 64usize;
    let bulk_path = dir.join("bulk");
    let block = vec![b'y'; 1 << 20];
    let t = Instant::now();
    {
        let mut f = File::create(&bulk_path).map_err(io_err)?;
        for _ in 0..bulk_mib {
            f.write_all(&block).map_err(io_err)?;
        }
        f.sync_data().map_err(io_err)?;
    }
    let bulk_mib_per_s = bulk_mib as f64 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&bulk_path);
    let _ = std::fs::remove_dir(&dir);
    let per_msg = |c: f64, n: usize| c * 1000.0 / (rounds * n) as f64;
    let (parallel_p99, syncfs_p99) = (p99_ms(parallel.clone()), p99_ms(syncfs.clone()));
    let journal_p99 = p99_ms(journal.clone());
    let (single, serial, parallel, syncfs, journal) = (
        median_ms(single),
        median_ms(serial),
        median_ms(parallel),
        median_ms(syncfs),
        median_ms(journal),
    );
    let rate = |ms: f64, n: usize| {
        if ms > 0.0 {
            n as f64 * 1000.0 / ms
        } else {
            0.0
        }
    };
    println!(
        "label={label} cmd=fsync size={size} batch={batch} rounds={rounds} single_ms={single:.3} \
         single_bound_per_s={:.1} serial_batch_ms={serial:.3} serial_bound_per_s={:.1} \
         parallel_batch_ms={parallel:.3} parallel_bound_per_s={:.1} syncfs_batch_ms={syncfs:.3} \
         syncfs_bound_per_s={:.1} single_cpu_ms={:.4} serial_cpu_ms={:.4} parallel_cpu_ms={:.4} \
         syncfs_cpu_ms={:.4} bulk_mib_per_s={bulk_mib_per_s:.1} \
         parallel_batch_p99_ms={parallel_p99:.3} syncfs_batch_p99_ms={syncfs_p99:.3} \
         journal_batch_ms={journal:.3} journal_bound_per_s={:.1} journal_cpu_ms={:.4} \
         journal_batch_p99_ms={journal_p99:.3}",
        rate(single, 1),
        rate(serial, batch),
        rate(parallel, batch),
        rate(syncfs, batch),
        per_msg(cpu[0], 1),
        per_msg(cpu[1], batch),
        per_msg(cpu[2], batch),
        per_msg(cpu[3], batch),
        rate(journal, batch),
        per_msg(cpu[4], batch),
    );
    Ok(())
}
