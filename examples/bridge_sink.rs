//! The benchmark bridge sink: a stand-in for the Exocortex XMPP bridge's `/replies` rail that
//! checks every request against `shared/bridge-api.md`, counts what it accepted and stamps the
//! time of the last delivery, so `bench/run.sh` can measure delivered msg/s end to end.
//!
//! Like the real bridge it serves one request at a time, HTTP/1.0, no keep-alive, so the
//! daemon's delivery path meets the same shape of peer it meets in production (only faster:
//! no Python, no XMPP).
//!
//! Subcommands:
//!
//! - `serve [--port P]`: listen on 127.0.0.1:P (0: any free port), print `port=N` on stdout,
//!   serve until killed. `PUT /replies` is the bridge contract; `GET /stats` (not part of the
//!   real bridge, for the harness) answers `count=N rejected=N first_ns=T last_ns=T cpu_ns=C`
//!   with the times of the first and last accepted PUT in nanoseconds since the Unix epoch and
//!   the CPU time (user + system) the sink has used so far, so a harness can tell what its
//!   PUTs cost the sink.
//! - `put --url http://127.0.0.1:P/replies --count N [--size B]`: a sequential PUT client,
//!   one connection per request like the daemon's bridge client, that measures how many PUTs
//!   per second the sink absorbs on its own, and the CPU each PUT costs the client and the
//!   sink; prints one `key=value` line.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest request head (request line + headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The largest body accepted; a digest is bounded far below this.
const MAX_BODY: usize = 1024 * 1024;
/// How long one request may take to arrive or one response to be read.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure of the sink or of its PUT client.
#[derive(Debug)]
enum SinkError {
    /// Occurs when the command line is wrong.
    Usage(String),
    /// Occurs when a socket fails outside a served request.
    Io(String, io::Error),
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkError::Usage(m) => write!(f, "usage: {m}"),
            SinkError::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SinkError::Io(_, e) => Some(e),
            SinkError::Usage(_) => None,
        }
    }
}

fn usage(e: pico_args::Error) -> SinkError {
    SinkError::Usage(e.to_string())
}

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    let sub = args.subcommand().ok().flatten().unwrap_or_default();
    let result = match sub.as_str() {
        "serve" => cmd_serve(args),
        "put" => cmd_put(args),
        _ => Err(SinkError::Usage(
            "bridge_sink serve [--port P] | put --url URL --count N [--size B]".into(),
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bridge_sink: {e}");
            ExitCode::from(2)
        }
    }
}

/// CPU time (user + system) this process has used so far, all threads, in nanoseconds.
fn self_cpu_ns() -> u128 {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let ns = |t: nix::sys::time::TimeVal| {
                t.tv_sec() as u128 * 1_000_000_000 + t.tv_usec() as u128 * 1_000
            };
            ns(u.user_time()) + ns(u.system_time())
        }
        Err(_) => 0,
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- server

/// What the sink counted so far.
#[derive(Default)]
struct Counters {
    count: u64,
    rejected: u64,
    first_ns: u128,
    last_ns: u128,
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    content_length: Option<usize>,
    content_type: Option<String>,
}

fn read_head(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Head>> {
    let mut limited = reader.by_ref().take(MAX_HEAD as u64);
    let mut line = String::new();
    if limited.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut head = Head {
        method,
        path,
        content_length: None,
        content_type: None,
    };
    loop {
        line.clear();
        if limited.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "request head cut short (or over 64 KiB)",
            ));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            return Ok(Some(head));
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                head.content_length = v.parse().ok();
            } else if k == "content-type" {
                head.content_type = Some(v.to_string());
            }
        }
    }
}

fn respond(stream: &mut TcpStream, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        _ => "Unsupported method",
    };
    let _ = write!(
        stream,
        "HTTP/1.0 {status} {reason}\r\nServer: bridge_sink\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

/// Checks one PUT against the bridge contract; `Err` holds the status and the reason the
/// real bridge would have had to refuse it.
fn check_put(head: &Head, body: &[u8]) -> Result<(), (u16, String)> {
    if head.path != "/replies" {
        return Err((404, format!("path {} is not /replies", head.path)));
    }
    match &head.content_type {
        Some(ct) if ct.contains("application/json") => {}
        other => return Err((400, format!("Content-Type {other:?}"))),
    }
    if let Some(pos) = body.iter().position(|b| *b > 0x7f) {
        return Err((500, format!("non-ASCII byte at offset {pos}")));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| (400, format!("JSON does not parse: {e}")))?;
    let object = value
        .as_object()
        .ok_or((400, "JSON is not an object".to_string()))?;
    let has = |k: &str| {
        object
            .iter()
            .any(|(name, v)| name.to_lowercase() == k && v.is_string())
    };
    if has("name") && has("reply") {
        Ok(())
    } else {
        Err((400, "name or reply missing".into()))
    }
}

fn handle(stream: TcpStream, counters: &mut Counters) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let Some(head) = read_head(&mut reader)? else {
        return Ok(());
    };
    if head.method == "GET" && head.path == "/stats" {
        let body = format!(
            "count={} rejected={} first_ns={} last_ns={} cpu_ns={}\n",
            counters.count,
            counters.rejected,
            counters.first_ns,
            counters.last_ns,
            self_cpu_ns()
        );
        respond(&mut writer, 200, &body);
        return Ok(());
    }
    let mut reject = |writer: &mut TcpStream, status: u16, why: String| {
        counters.rejected += 1;
        // Bounded: a broken client could otherwise flood the terminal.
        if counters.rejected <= 20 {
            eprintln!("bridge_sink: rejected ({status}): {why}");
        }
        respond(writer, status, "{\"error\": \"rejected\"}");
    };
    if head.method != "PUT" {
        reject(
            &mut writer,
            501,
            format!("method {} not served", head.method),
        );
        return Ok(());
    }
    let Some(length) = head.content_length else {
        reject(&mut writer, 500, "no Content-Length".into());
        return Ok(());
    };
    if length > MAX_BODY {
        reject(&mut writer, 413, format!("body of {length} bytes"));
        return Ok(());
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        reject(&mut writer, 500, "body shorter than Content-Length".into());
        return Ok(());
    }
    match check_put(&head, &body) {
        Ok(()) => {
            let t = now_ns();
            if counters.count == 0 {
                counters.first_ns = t;
            }
            counters.count += 1;
            counters.last_ns = t;
            respond(&mut writer, 200, "");
        }
        Err((status, why)) => reject(&mut writer, status, why),
    }
    Ok(())
}

fn cmd_serve(mut args: pico_args::Arguments) -> Result<(), SinkError> {
    let port: u16 = args
        .opt_value_from_str("--port")
        .map_err(usage)?
        .unwrap_or(0);
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| SinkError::Io(format!("bind 127.0.0.1:{port}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| SinkError::Io("local_addr".into(), e))?;
    println!("port={}", addr.port());
    let _ = io::stdout().flush();
    let mut counters = Counters::default();
    // One request at a time, like the real bridge: the next connection waits in the backlog.
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                if let Err(e) = handle(s, &mut counters) {
                    eprintln!("bridge_sink: request: {e}");
                }
            }
            Err(e) => {
                eprintln!("bridge_sink: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- PUT client

/// A JSON body shaped like a digest of a 1 KiB message (pure ASCII, `\n` escaped).
fn digest_body(size: usize) -> String {
    let mut reply = String::from(
        "From: Load Generator <loadgen@localhost>\\nTo: sink@localhost\\nSubject: benchmark \
         message\\nDate: Tue, 24 Nov 2026 14:00:00 +0000\\nVia: SMTP from 127.0.0.1\\n\\n",
    );
    let line = "The quick brown fox jumps over the lazy dog; benchmark payload text 0123456\\n";
    while reply.len() + line.len() < size.saturating_sub(40) {
        reply.push_str(line);
    }
    format!("{{\"name\": \"benchhost\", \"reply\": \"{reply}\"}}")
}

fn put_once(addr: SocketAddr, host: &str, body: &str) -> io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let req = format!(
        "PUT /replies HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut resp = Vec::with_capacity(256);
    s.take(64 * 1024).read_to_end(&mut resp)?;
    let status = resp
        .get(9..12)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))?;
    Ok(status)
}

/// The CPU time a sink serving at `addr` has used so far (its `GET /stats`), if it says.
fn sink_cpu_ns(addr: SocketAddr) -> Option<u128> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).ok()?;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    s.write_all(b"GET /stats HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.take(64 * 1024).read_to_string(&mut text).ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    body.split_whitespace()
        .find_map(|kv| kv.strip_prefix("cpu_ns="))
        .and_then(|v| v.parse().ok())
}

fn cmd_put(mut args: pico_args::Arguments) -> Result<(), SinkError> {
    let url: String = args.value_from_str("--url").map_err(usage)?;
    let count: usize = args
        .opt_value_from_str("--count")
        .map_err(usage)?
        .unwrap_or(2000);
    let size: usize = args
        .opt_value_from_str("--size")
        .map_err(usage)?
        .unwrap_or(1024);
    let label: String = args
        .opt_value_from_str("--label")
        .map_err(usage)?
        .unwrap_or("-".into());
    if count == 0 || count > 1_000_000 || size > MAX_BODY {
        return Err(SinkError::Usage(
            "--count 1..=1000000, --size <= 1 MiB".into(),
        ));
    }
    let host = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .ok_or_else(|| SinkError::Usage(format!("--url http://HOST:PORT/replies, not {url}")))?;
    let addr: SocketAddr = host
        .parse()
        .map_err(|e| SinkError::Usage(format!("{host}: {e}")))?;
    let body = digest_body(size);
    let mut lat = Vec::with_capacity(count);
    let (mut ok, mut failed) = (0u64, 0u64);
    let sink_cpu_before = sink_cpu_ns(addr);
    let cpu_before = self_cpu_ns();
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        match put_once(addr, host, &body) {
            Ok(200) => {
                ok += 1;
                lat.push(t.elapsed().as_micros() as u64);
            }
            Ok(_) | Err(_) => failed += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let client_cpu = self_cpu_ns() - cpu_before;
    // Read after the clock stopped; the one GET /stats it costs is noise against `count` PUTs.
    let sink_cpu = sink_cpu_before
        .zip(sink_cpu_ns(addr))
        .map(|(b, a)| a.saturating_sub(b));
    let per_put_ms = |ns: u128| {
        if ok > 0 {
            format!("{:.4}", ns as f64 / 1e6 / ok as f64)
        } else {
            "nan".into()
        }
    };
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            let rank = ((p / 100.0) * lat.len() as f64).ceil() as usize;
            lat[rank.clamp(1, lat.len()) - 1] as f64 / 1000.0
        }
    };
    println!(
        "label={label} cmd=put count={count} body_bytes={} ok={ok} errors={failed} \
         elapsed_s={elapsed:.4} puts_per_s={:.1} p50_ms={:.3} p99_ms={:.3} \
         client_cpu_ms_per_put={} sink_cpu_ms_per_put={}",
        body.len(),
        if elapsed > 0.0 {
            ok as f64 / elapsed
        } else {
            0.0
        },
        pct(50.0),
        pct(99.0),
        per_put_ms(client_cpu),
        sink_cpu.map_or_else(|| "nan".into(), per_put_ms),
    );
    Ok(())
}
