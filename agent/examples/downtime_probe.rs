//! Downtime probe for `scripts/bench-swap.sh`: polls an HTTP URL every few
//! milliseconds across a worker swap and prints, as one JSON line, how long the
//! service went without a good answer.
//!
//! ```text
//! downtime_probe --url http://127.0.0.1:18080/cgi-bin/health
//!                [--expect-body-contains v2] [--timeout-s 120] [--settle 20]
//!                [--interval-ms 5] [--request-timeout-ms 500]
//! ```
//!
//! A *good* answer is any 2xx. It is *new* when its body contains the
//! `--expect-body-contains` text or, without that option, when it is the first
//! good answer after a failure. The probe stops once it has seen the first new
//! answer and `--settle` more good answers after it (or at `--timeout-s`), and
//! prints:
//!
//! - `downtime_ms`: from the last good answer before the first new one (the old
//!   worker's last) to the first new one;
//! - `max_gap_ms` (with `max_gap_from_ms`/`max_gap_to_ms`): the longest time
//!   between two consecutive good answers over the whole run;
//! - unix-millisecond timestamps (`*_ms` fields other than durations), and
//!   request/success/failure counts.
//!
//! Exit status: 0 measured; 1 timed out or no old answer seen (the JSON line says
//! which, with `"ok":false`); 2 bad arguments. Plain `std`: HTTP/1.0 over a
//! `TcpStream`, one connection per request, only `http://` URLs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The most of an answer that is read (health answers are tiny).
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

struct Args {
    url: String,
    /// `host[:port]` as written in the URL, for the `Host` header.
    authority: String,
    path: String,
    addr: SocketAddr,
    timeout: Duration,
    expect: Option<String>,
    settle: u32,
    interval: Duration,
    request_timeout: Duration,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("downtime_probe: {msg}");
    eprintln!(
        "usage: downtime_probe --url http://HOST:PORT/PATH [--expect-body-contains STR] \
         [--timeout-s S] [--settle N] [--interval-ms MS] [--request-timeout-ms MS]"
    );
    ExitCode::from(2)
}

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let mut timeout_s = 120.0_f64;
    let mut expect = None;
    let mut settle = 20_u32;
    let mut interval_ms = 5_u64;
    let mut request_timeout_ms = 500_u64;

    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if name == "--help" || name == "-h" {
            return Err("help".to_owned());
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{name} needs a value"))?,
        };
        let bad = |what: &str| format!("{name}: {what}, got {value:?}");
        match name.as_str() {
            "--url" => url = Some(value.clone()),
            "--timeout-s" => {
                timeout_s = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| bad("want a positive number of seconds"))?;
            }
            "--expect-body-contains" => expect = Some(value.clone()),
            "--settle" => settle = value.parse().map_err(|_| bad("want a count"))?,
            "--interval-ms" => interval_ms = value.parse().map_err(|_| bad("want ms"))?,
            "--request-timeout-ms" => {
                request_timeout_ms = value
                    .parse()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| bad("want ms > 0"))?;
            }
            _ => return Err(format!("unknown argument {name}")),
        }
    }

    let url = url.ok_or("--url is required")?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported, got {url:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // A port is needed for the lookup; a bracketed IPv6 literal has colons of its own.
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    let target = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("resolving {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target} resolves to no address"))?;

    Ok(Args {
        authority: authority.to_owned(),
        path: path.to_owned(),
        url,
        addr,
        timeout: Duration::from_secs_f64(timeout_s),
        expect,
        settle,
        interval: Duration::from_millis(interval_ms),
        request_timeout: Duration::from_millis(request_timeout_ms),
    })
}

/// One GET: the status code and the body (or the whole answer, if it has no
/// header/body separator).
fn get(a: &Args) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&a.addr, a.request_timeout)?;
    s.set_read_timeout(Some(a.request_timeout))?;
    s.set_write_timeout(Some(a.request_timeout))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: downtime_probe\r\nConnection: close\r\n\r\n",
        a.path, a.authority
    )?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER_BYTES).read_to_end(&mut answer)?;

    // "HTTP/1.x NNN ..."
    let status = answer
        .strip_prefix(b"HTTP/")
        .and_then(|r| r.iter().position(|&b| b == b' ').map(|i| &r[i + 1..]))
        .and_then(|r| r.get(..3))
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let body = match answer.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => answer.split_off(i + 4),
        None => answer,
    };
    Ok((status, body))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Converts instants to unix milliseconds against one reference pair.
struct Clock {
    at: Instant,
    unix_ms: f64,
}

impl Clock {
    fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            at: Instant::now(),
            unix_ms: unix.as_secs_f64() * 1000.0,
        }
    }

    fn unix_ms(&self, t: Instant) -> u64 {
        (self.unix_ms + t.duration_since(self.at).as_secs_f64() * 1000.0) as u64
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "null".to_owned(), |v| v.to_string())
}

#[derive(Default)]
struct Observed {
    requests: u64,
    successes: u64,
    failures: u64,
    /// The latest good answer.
    last_ok: Option<Instant>,
    /// A failure was seen after at least one good answer.
    failed_after_ok: bool,
    /// The first new answer, and the good answer just before it.
    first_new: Option<Instant>,
    last_old: Option<Instant>,
    /// Good answers after the first new one.
    after_new: u32,
    /// The longest gap between consecutive good answers: (length, from, to).
    max_gap: Option<(Duration, Instant, Instant)>,
}

impl Observed {
    fn good(&mut self, t: Instant, body: &[u8], expect: Option<&str>) {
        self.successes += 1;
        if let Some(prev) = self.last_ok {
            let gap = t.duration_since(prev);
            if self.max_gap.is_none_or(|(g, _, _)| gap > g) {
                self.max_gap = Some((gap, prev, t));
            }
        }
        if self.first_new.is_some() {
            self.after_new += 1;
        } else {
            let is_new = match expect {
                Some(text) => contains(body, text.as_bytes()),
                None => self.failed_after_ok,
            };
            if is_new {
                self.first_new = Some(t);
                self.last_old = self.last_ok;
            }
        }
        self.last_ok = Some(t);
    }

    fn bad(&mut self) {
        self.failures += 1;
        if self.last_ok.is_some() {
            self.failed_after_ok = true;
        }
    }

    fn report(&self, a: &Args, clock: &Clock, started: Instant, error: Option<&str>) -> String {
        let downtime = match (self.last_old, self.first_new) {
            (Some(old), Some(new)) => Some(ms(new.duration_since(old))),
            _ => None,
        };
        format!(
            concat!(
                "{{\"ok\":{},\"error\":{},\"url\":{},\"downtime_ms\":{},",
                "\"last_old_ok_ms\":{},\"first_new_ok_ms\":{},",
                "\"max_gap_ms\":{},\"max_gap_from_ms\":{},\"max_gap_to_ms\":{},",
                "\"requests\":{},\"successes\":{},\"failures\":{},\"elapsed_ms\":{}}}"
            ),
            error.is_none(),
            opt(error.map(json_str)),
            json_str(&a.url),
            opt(downtime),
            opt(self.last_old.map(|t| clock.unix_ms(t))),
            opt(self.first_new.map(|t| clock.unix_ms(t))),
            opt(self.max_gap.map(|(g, _, _)| ms(g))),
            opt(self.max_gap.map(|(_, f, _)| clock.unix_ms(f))),
            opt(self.max_gap.map(|(_, _, t)| clock.unix_ms(t))),
            self.requests,
            self.successes,
            self.failures,
            ms(started.elapsed()),
        )
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => return usage(&msg),
    };
    let clock = Clock::new();
    let started = Instant::now();
    let mut seen = Observed::default();

    loop {
        let sent = Instant::now();
        if sent.duration_since(started) >= args.timeout {
            let why = if seen.first_new.is_some() {
                "timeout: the new answers did not settle"
            } else {
                "timeout: no new answer"
            };
            println!("{}", seen.report(&args, &clock, started, Some(why)));
            return ExitCode::from(1);
        }
        seen.requests += 1;
        match get(&args) {
            Ok((status, body)) if (200..300).contains(&status) => {
                seen.good(Instant::now(), &body, args.expect.as_deref());
            }
            _ => seen.bad(),
        }
        if seen.first_new.is_some() && seen.after_new >= args.settle {
            break;
        }
        if let Some(rest) = args.interval.checked_sub(sent.elapsed()) {
            std::thread::sleep(rest);
        }
    }

    if seen.last_old.is_none() {
        let why = "no good answer before the first new one (start the probe before the swap)";
        println!("{}", seen.report(&args, &clock, started, Some(why)));
        return ExitCode::from(1);
    }
    println!("{}", seen.report(&args, &clock, started, None));
    ExitCode::SUCCESS
}
