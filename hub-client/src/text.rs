//! Untrusted text made safe to show and to keep.
//!
//! Text from outside (a hub's error body or nudge reason, a registry's error
//! detail, a worker's answer or log line, an operator's `--reason`) may hold
//! terminal escape sequences (`ESC [ 2 J`, OSC 8 links, a title change), bidi
//! overrides that reorder what a reader sees, or megabytes. [`sanitize`] is the
//! one function every such source goes through before the text reaches a
//! terminal, the log, the state, the history or a report: every control
//! character (C0, DEL, C1) and every bidi control is written escaped (`\u{1b}`,
//! `\n`), so a reader sees that it was there and nothing acts on it, and the
//! result is capped at a number of characters, with a marker saying how much
//! was cut.

/// The cap of most quoted texts (error details, reasons).
pub const MAX_TEXT: usize = 300;

/// `s` with control and bidi characters escaped, cut to at most `max`
/// characters (escapes count as what they print) plus a marker
/// `… (N more characters)` when it was longer.
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max.saturating_add(32)));
    let mut shown: usize = 0;
    let mut chars = s.chars();
    for c in chars.by_ref() {
        let before = out.len();
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        let width = out[before..].chars().count();
        if shown.saturating_add(width) > max {
            out.truncate(before);
            let rest = 1 + chars.count();
            out.push_str(&format!("… ({rest} more characters)"));
            return out;
        }
        shown += width;
    }
    out
}

/// Whether `s` holds anything [`sanitize`] would escape.
pub fn has_control(s: &str) -> bool {
    s.chars().any(needs_escape)
}

/// C0 (U+0000–U+001F), DEL (U+007F), C1 (U+0080–U+009F), and the bidi
/// embedding, override and isolate controls (U+202A–U+202E, U+2066–U+2069).
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(sanitize("plain text", 100), "plain text");
        assert_eq!(
            sanitize("\u{1b}[2J\u{1b}]0;owned\u{7}", 100),
            "\\u{1b}[2J\\u{1b}]0;owned\\u{7}"
        );
        assert_eq!(sanitize("a\nb\tc\rd", 100), "a\\nb\\tc\\rd");
        assert_eq!(
            sanitize("del\u{7f} c1\u{9b}31m", 100),
            "del\\u{7f} c1\\u{9b}31m"
        );
        assert_eq!(sanitize("evil\u{202e}txt.exe", 100), "evil\\u{202e}txt.exe");
        assert_eq!(sanitize("über ✓ 日本", 100), "über ✓ 日本");
        assert!(has_control("x\u{85}") && !has_control("x ✓"));
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            assert!(!has_control(&sanitize(&c.to_string(), 100)), "{c:?}");
        }
    }

    #[test]
    fn long_text_is_cut_with_a_marker() {
        assert_eq!(sanitize(&"x".repeat(10), 10), "x".repeat(10));
        assert_eq!(
            sanitize(&"x".repeat(11), 10),
            format!("{}… (1 more characters)", "x".repeat(10))
        );
        let cut = sanitize(&"é".repeat(1_000_000), MAX_TEXT);
        assert!(cut.starts_with(&"é".repeat(MAX_TEXT)));
        assert!(cut.ends_with("… (999700 more characters)"), "{cut}");
        // An escape is never cut in half.
        assert_eq!(sanitize("ab\u{1b}", 7), "ab… (1 more characters)");
    }
}
