//! An incremental parser of `text/event-stream` (the HTML Living Standard's
//! "Server-sent events" interpretation rules): bytes in, events out.
//!
//! Small on purpose: the agent needs `event`, `data`, `id` and `retry`, one
//! stream at a time, with a bound on how much a hub may send without ending
//! an event (a garbage stream must not grow the agent's memory).

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event` field; `message` when the hub sent none.
    pub event: String,
    /// The `data` lines joined with `\n`.
    pub data: String,
    /// The last event ID seen on the stream so far (sent back as `Last-Event-ID`).
    pub id: Option<String>,
}

/// The stream broke the rules the agent can live with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an event-stream line or event is longer than {limit} bytes")]
    TooLong { limit: usize },
}

/// Feeds bytes through [`Parser::push`]; complete events come out.
#[derive(Debug)]
pub struct Parser {
    limit: usize,
    /// Bytes of the line not yet ended.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` first in the next one belongs to it.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    retry: Option<u64>,
}

impl Parser {
    /// A parser that refuses lines and events longer than `limit` bytes.
    pub fn new(limit: usize) -> Parser {
        Parser {
            limit,
            line: Vec::new(),
            after_cr: false,
            event: String::new(),
            data: String::new(),
            has_data: false,
            last_id: None,
            retry: None,
        }
    }

    /// Starts from an ID already seen (a reconnect's `Last-Event-ID`).
    pub fn with_last_id(mut self, id: Option<String>) -> Parser {
        self.last_id = id;
        self
    }

    /// The last event ID seen (from `id:` lines, dispatched or not).
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The reconnection delay the hub last asked for, in milliseconds.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry
    }

    /// Takes the next bytes; returns the events they completed, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut out = Vec::new();
        for &b in bytes {
            let skip_lf = std::mem::replace(&mut self.after_cr, false);
            match b {
                b'\n' if skip_lf => {}
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.line_done(&line)? {
                        out.push(ev);
                    }
                }
                _ => {
                    if self.line.len() >= self.limit {
                        return Err(SseError::TooLong { limit: self.limit });
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, raw: &[u8]) -> Result<Option<Event>, SseError> {
        if raw.is_empty() {
            return Ok(self.dispatch());
        }
        // Invalid UTF-8 is replaced, as a browser decoding the stream would.
        let line = String::from_utf8_lossy(raw);
        let line = line.strip_prefix('\u{feff}').unwrap_or(&line);
        if line.starts_with(':') {
            return Ok(None); // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    return Err(SseError::TooLong { limit: self.limit });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {} // unknown fields are ignored
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<Event> {
        let event = std::mem::take(&mut self.event);
        let data = std::mem::take(&mut self.data);
        if !std::mem::replace(&mut self.has_data, false) {
            return None;
        }
        Some(Event {
            event: if event.is_empty() {
                "message".into()
            } else {
                event
            },
            data,
            id: self.last_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Vec<Event> {
        Parser::new(4096).push(input).unwrap()
    }

    fn ev(event: &str, data: &str, id: Option<&str>) -> Event {
        Event {
            event: event.into(),
            data: data.into(),
            id: id.map(Into::into),
        }
    }

    #[test]
    fn events_fields_and_comments() {
        let got = all(
            b": keep-alive\n\nid: 7\nevent: nudge\ndata: {\"reason\":\"x\"}\n\ndata:a\ndata: b\n\n",
        );
        assert_eq!(
            got,
            vec![
                ev("nudge", "{\"reason\":\"x\"}", Some("7")),
                ev("message", "a\nb", Some("7")),
            ]
        );
    }

    #[test]
    fn any_line_ending_and_any_chunking() {
        let text = b"event: nudge\r\ndata: 1\r\n\r\nevent: nudge\rdata: 2\r\rdata: 3\n\n";
        let whole = all(text);
        assert_eq!(whole.len(), 3);
        // Split the same bytes at every position: the same events come out.
        for cut in 0..text.len() {
            let mut p = Parser::new(4096);
            let mut got = p.push(&text[..cut]).unwrap();
            got.extend(p.push(&text[cut..]).unwrap());
            assert_eq!(got, whole, "cut at {cut}");
        }
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_unfinished_event_waits() {
        let mut p = Parser::new(4096);
        assert!(p.push(b"event: nudge\n\n").unwrap().is_empty());
        assert!(p.push(b"data: x\n").unwrap().is_empty());
        assert_eq!(p.push(b"\n").unwrap(), vec![ev("message", "x", None)]);
    }

    #[test]
    fn id_and_retry_rules() {
        let mut p = Parser::new(4096).with_last_id(Some("3".into()));
        let got = p
            .push(b"retry: 2500\nretry: x\nid: a\0b\ndata: d\n\n")
            .unwrap();
        assert_eq!(got, vec![ev("message", "d", Some("3"))]);
        assert_eq!(p.retry_ms(), Some(2500));
        p.push(b"id\n").unwrap();
        assert_eq!(p.last_id(), Some(""));
    }

    #[test]
    fn bounded() {
        let mut p = Parser::new(16);
        assert_eq!(
            p.push(&[b'x'; 17]).unwrap_err(),
            SseError::TooLong { limit: 16 }
        );
        let mut p = Parser::new(16);
        p.push(b"data: 01234567\n").unwrap();
        assert!(p.push(b"data: 01234567\n").is_err());
    }

    #[test]
    fn bad_utf8_is_replaced_not_fatal() {
        let got = all(b"data: \xff\xfe\n\n");
        assert_eq!(got[0].data, "\u{fffd}\u{fffd}");
    }
}
