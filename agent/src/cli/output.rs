//! The one output helper: with `--json`, the agent's answer exactly as it came
//! (pretty-printed, field order kept) on stdout; else the text an operator
//! reads at a glance. Errors and progress go to stderr; errors start with
//! `agentctl: `. Also the small formatters the text output shares.

use std::io::Write;

use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, UtcOffset};

use super::client::Reply;
use crate::control::api::ActionResult;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output { json }
    }

    pub fn json(self) -> bool {
        self.json
    }

    /// Prints an answer: with `--json` the server's JSON on stdout; else
    /// `human(value)`, on stdout when `ok`, else on stderr as an error.
    pub fn answer<T>(self, reply: &Reply<T>, ok: bool, human: impl FnOnce(&T) -> String) {
        if self.json {
            stdout(&pretty_json(&reply.raw));
        } else if ok {
            stdout(&human(&reply.value));
        } else {
            self.error(&human(&reply.value));
        }
    }

    /// A progress line on stderr (text output only).
    pub fn progress(self, line: &str) {
        if !self.json {
            eprintln!("{}", terminal_safe(line));
        }
    }

    /// An error on stderr, in either mode.
    pub fn error(self, message: &str) {
        eprintln!("agentctl: {}", terminal_safe(message.trim_end()));
    }

    /// A command that did not get done: the error on stderr and, with
    /// `--json`, also as JSON on stdout (`{"error": ..., "exit_code": N}`),
    /// so that a script reading stdout always gets JSON.
    pub fn failure(self, message: &str, exit: super::Exit) {
        if self.json {
            stdout(&error_json(message, exit));
        }
        self.error(message);
    }
}

/// The JSON a command prints on stdout with `--json` when it fails before
/// the agent answers (unreachable, usage error).
pub fn error_json(message: &str, exit: super::Exit) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "error": message.trim_end(),
        "exit_code": exit as u8,
    }))
    .unwrap_or_default()
}

/// Writes `text` and a final newline to stdout. A closed pipe (`| head -1`,
/// `| true`) is not an error: the rest is dropped quietly and the command
/// keeps its exit status. Every line the binaries print on stdout goes
/// through here or [`write_stdout`] (`println!` would panic, exit 101).
pub fn stdout(text: &str) {
    let mut line = terminal_safe(text.trim_end_matches('\n'));
    line.push('\n');
    write_stdout(line.as_bytes());
}

/// Writes `bytes` to stdout as they are; see [`stdout`].
pub fn write_stdout(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

/// `text` with every control character but the line breaks written escaped
/// (`\u{1b}`): status and history carry text from outside (a registry's or
/// hub's error, a worker's log line, an operator's reason), and a terminal
/// must show an escape sequence, never obey it. Every line agentctl prints
/// goes through here.
pub fn terminal_safe(text: &str) -> String {
    text.split('\n')
        .map(|line| crate::text::sanitize(line, usize::MAX))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Re-indents JSON text (two spaces, as `serde_json`'s pretty printer) without
/// parsing it into a map, so the server's field order and numbers stay as
/// they are. The text must already be valid JSON.
pub fn pretty_json(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    let mut out = String::with_capacity(raw.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if in_string {
            if c.is_control() {
                // Valid JSON carries no raw C0; DEL and C1 may be raw: escape
                // them too, so the value is the same and no terminal acts on it.
                out.push_str(&format!("\\u{:04x}", c as u32));
                continue;
            }
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                out.push(c);
                if chars.get(j) == Some(&close) {
                    out.push(close);
                    i = j + 1;
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// `sha256:<64 hex>` as its first 12 hex digits; `-` for none.
pub fn short_digest(d: Option<&str>) -> String {
    match d {
        None => "-".into(),
        Some(d) => {
            let hex = d.split_once(':').map_or(d, |(_, h)| h);
            hex.chars().take(12).collect()
        }
    }
}

/// An RFC 3339 time from the agent, to the second, with how long ago (or
/// how soon) it is: `2026-11-22T07:15:11Z (12s ago)`. Text that is not
/// RFC 3339 is shown as it is.
pub fn when(rfc3339: &str, now: OffsetDateTime) -> String {
    match OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(t) => moment(t, now),
        Err(_) => rfc3339.to_string(),
    }
}

/// `2026-11-22T07:15:11Z (12s ago)`.
pub fn moment(t: OffsetDateTime, now: OffsetDateTime) -> String {
    // Counted from the second shown, so that the two agree.
    let t = t.replace_nanosecond(0).unwrap_or(t);
    format!("{} ({})", timestamp(t), relative(t, now))
}

/// `2026-11-22T07:15:11Z`: UTC, to the second.
pub fn timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `12s ago`, `in 4m`, `now`.
pub fn relative(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let d: Duration = now - t;
    let secs = d.whole_seconds();
    if secs == 0 {
        return "now".into();
    }
    let span = span(secs.unsigned_abs());
    if secs > 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// `45s`, `4m10s`, `2h5m`, `3d4h`: the two largest units.
fn span(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

/// A duration in milliseconds: `850ms`, `4.2s`, `3m5s`.
pub fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        span(ms / 1000)
    }
}

/// `key: value` lines with the values aligned; a value of several lines, or
/// a row with an empty key, continues under the value above.
pub fn key_values(rows: &[(&str, String)]) -> String {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        + 1;
    let mut out = String::new();
    for (k, v) in rows {
        let mut lines = v.lines();
        let first = lines.next().unwrap_or("");
        let key = if k.is_empty() {
            String::new()
        } else {
            format!("{k}:")
        };
        out.push_str(format!("{key:width$}  {first}").trim_end());
        out.push('\n');
        for l in lines {
            out.push_str(format!("{:width$}  {l}", "").trim_end());
            out.push('\n');
        }
    }
    out
}

/// A table: a header row and rows, columns padded to their widest cell (the
/// last column is not padded, so long errors do not push lines out).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = row(&widths, header.iter().copied());
    for r in rows {
        out.push_str(&row(&widths, r.iter().map(String::as_str)));
    }
    out
}

/// One table line: cells padded to `widths`, two spaces apart, no trailing blanks.
fn row<'a>(widths: &[usize], cells: impl Iterator<Item = &'a str>) -> String {
    let mut s = String::new();
    for (i, (cell, w)) in cells.zip(widths).enumerate() {
        if i > 0 {
            s.push_str("  ");
        }
        s.push_str(cell);
        s.extend(std::iter::repeat_n(
            ' ',
            w.saturating_sub(cell.chars().count()),
        ));
    }
    let mut s = s.trim_end().to_string();
    s.push('\n');
    s
}

/// `": <error>"` when the result carries an error, else nothing.
pub fn because(r: &ActionResult) -> String {
    r.error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default()
}

/// One line saying what a check or an update led to.
pub fn action_line(r: &ActionResult) -> String {
    let digest = r.digest.as_deref().unwrap_or("the new digest");
    let why = because(r);
    match r.outcome.as_str() {
        "started" => "check started; agentctl status shows what it finds".into(),
        "up_to_date" => match &r.digest {
            Some(d) => format!("up to date: the worker runs {d}"),
            None => "up to date".into(),
        },
        "updated" => format!("updated: the worker runs {digest}"),
        "skipped_bad" => format!(
            "not deployed: {digest} is marked bad (agentctl status says why; \
             agentctl update --digest deploys it anyway)"
        ),
        "held" => "not deployed: updates are held (the worker is drained or pinned; \
                   see agentctl status)"
            .into(),
        "deferred" => format!("not deployed yet{why}"),
        "rolled_back" => format!(
            "rolled back: {digest} failed and the last good digest runs again{why}"
        ),
        "aborted" => format!(
            "aborted: the update to {digest} stopped before the swap; the old worker keeps serving{why}"
        ),
        "failed" => format!("failed: the update to {digest} did not complete{why}"),
        "suspended" => format!(
            "suspended: the agent stopped before {digest} was verified; it runs, and the \
             verification resumes when the agent starts again"
        ),
        other => format!("{other}: {digest}{why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn pretty_json_keeps_order_and_matches_serde_layout() {
        let raw = r#"{"z":1,"a":[1,2,{}],"s":"a,{b}:\"c\"","e":[],"o":{"k":null}}"#;
        let p = pretty_json(raw);
        let v: serde_json::Value = serde_json::from_str(raw).unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&p).unwrap(), v);
        assert!(p.find("\"z\"").unwrap() < p.find("\"a\"").unwrap(), "{p}");
        // The same layout as serde_json's pretty printer for a sorted object.
        let sorted = r#"{"a":[1,2],"b":{"c":"x y","d":[]},"e":{}}"#;
        let v: serde_json::Value = serde_json::from_str(sorted).unwrap();
        assert_eq!(
            pretty_json(sorted),
            serde_json::to_string_pretty(&v).unwrap()
        );
        assert_eq!(pretty_json("[ ]"), "[]");
        assert_eq!(pretty_json(" 5 "), "5");
    }

    #[test]
    fn escape_sequences_are_shown_never_obeyed() {
        let shown = terminal_safe("error: \u{1b}[2J\u{1b}]0;owned\u{7}\nnext\u{9b}31m line\r");
        assert_eq!(
            shown,
            "error: \\u{1b}[2J\\u{1b}]0;owned\\u{7}\nnext\\u{9b}31m line\\r"
        );
        let raw = "{\"error\":\"a\\u001b[2J b\u{9b}c\u{7f}\"}";
        let pretty = pretty_json(raw);
        assert!(
            !pretty.chars().any(|c| c.is_control() && c != '\n'),
            "{pretty:?}"
        );
        let back: serde_json::Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(back["error"], "a\u{1b}[2J b\u{9b}c\u{7f}");
    }

    #[test]
    fn digests_are_cut_to_12_hex() {
        let d = format!("sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(short_digest(Some(&d)), "0123456789ab");
        assert_eq!(short_digest(None), "-");
    }

    #[test]
    fn times_read_at_a_glance() {
        let now = datetime!(2026-11-22 07:15:23 UTC);
        assert_eq!(
            when("2026-11-22T07:15:11.123456Z", now),
            "2026-11-22T07:15:11Z (12s ago)"
        );
        assert_eq!(
            when("2026-11-22T09:19:23+02:00", now),
            "2026-11-22T07:19:23Z (in 4m)"
        );
        assert_eq!(
            when("2026-11-20T06:00:00Z", now),
            "2026-11-20T06:00:00Z (2d1h ago)"
        );
        assert_eq!(
            when("2026-11-22T07:15:23Z", now),
            "2026-11-22T07:15:23Z (now)"
        );
        assert_eq!(when("yesterday", now), "yesterday");
        assert_eq!(span(3 * 3600 + 60), "3h1m");
        assert_eq!(span(250), "4m10s");
        assert_eq!(millis(850), "850ms");
        assert_eq!(millis(4249), "4.2s");
        assert_eq!(millis(185_000), "3m5s");
    }

    #[test]
    fn key_values_align() {
        let s = key_values(&[
            ("phase", "idle".into()),
            ("last good", "sha256:x".into()),
            ("bad digests", "one\ntwo".into()),
            ("", "three".into()),
        ]);
        assert_eq!(
            s,
            "phase:        idle\nlast good:    sha256:x\nbad digests:  one\n              two\n              three\n"
        );
    }

    #[test]
    fn tables_pad_all_but_the_last_column() {
        let t = table(
            &["AT", "KIND", "ERROR"],
            &[
                vec!["1".into(), "update".into(), "-".into()],
                vec!["22".into(), "rollback".into(), "long text".into()],
            ],
        );
        assert_eq!(
            t,
            "AT  KIND      ERROR\n1   update    -\n22  rollback  long text\n"
        );
    }

    #[test]
    fn every_outcome_has_a_line() {
        let r = |o: &str, e: Option<&str>| ActionResult {
            outcome: o.into(),
            digest: Some("sha256:ab".into()),
            error: e.map(str::to_string),
        };
        assert_eq!(
            action_line(&r("updated", None)),
            "updated: the worker runs sha256:ab"
        );
        assert_eq!(
            action_line(&r("rolled_back", Some("not healthy within 15s"))),
            "rolled back: sha256:ab failed and the last good digest runs again: not healthy within 15s"
        );
        for o in [
            "started",
            "up_to_date",
            "skipped_bad",
            "held",
            "deferred",
            "aborted",
            "failed",
            "new",
        ] {
            assert!(!action_line(&r(o, Some("x"))).is_empty());
        }
    }
}
