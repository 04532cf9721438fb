//! The hub's event stream (hub-client/src/sse.rs): the same bytes cut into
//! chunks at fuzzer-chosen points give the same events, last ID and retry as
//! in one piece, or the same error; nothing held grows past the limit.
//!
//! Input: `[limit/8] [n] [n × u16 cut]` then the stream.
#![no_main]

use hub_client::sse::{Event, Parser, SseError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let limit = 1 + data[0] as usize * 8;
    let n = (data[1] % 16) as usize;
    let Some(cuts) = data.get(2..2 + 2 * n) else {
        return;
    };
    let stream = &data[2 + 2 * n..];
    let mut cuts: Vec<usize> = cuts
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.push(stream.len());

    let mut whole = Parser::new(limit);
    let whole_result = whole.push(stream);

    let mut chunked = Parser::new(limit);
    let mut events: Vec<Event> = Vec::new();
    let mut error: Option<SseError> = None;
    let mut from = 0;
    for &to in &cuts {
        match chunked.push(&stream[from..to]) {
            Ok(evs) => events.extend(evs),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
        from = to;
    }

    match whole_result {
        Ok(whole_events) => {
            assert_eq!(error, None);
            assert_eq!(whole_events, events);
            assert_eq!(whole.last_id(), chunked.last_id());
            assert_eq!(whole.retry_ms(), chunked.retry_ms());
        }
        Err(e) => assert_eq!(Some(e), error),
    }
    let lines = stream.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
    assert!(events.len() <= lines);
    for ev in &events {
        // Data is bounded by the limit (its lines and the newlines between
        // them); a name or ID by one line (each bad UTF-8 byte may become a
        // 3-byte replacement character).
        assert!(ev.data.len() <= limit, "{} > {limit}", ev.data.len());
        assert!(ev.event.len() <= 3 * limit);
        assert!(ev.id.as_ref().is_none_or(|id| id.len() <= 3 * limit));
    }
});
