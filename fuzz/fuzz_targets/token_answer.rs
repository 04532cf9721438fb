//! A token endpoint's answer (registry/auth.rs: parse_token_answer), and the
//! `Authorization` header made of the token. Input: the body.
#![no_main]

use gpu_agent::fuzzing::registry;
use libfuzzer_sys::fuzz_target;
use time::macros::datetime;

fuzz_target!(|data: &[u8]| {
    let now = datetime!(2026-01-01 00:00:00 UTC);
    if let Ok((token, lifetime_s)) = registry::token_answer(data, now) {
        assert!(!token.is_empty());
        // The token always makes a valid header, never the empty fallback.
        let header = registry::bearer_header(&token);
        assert!(header.is_sensitive());
        assert_eq!(header.as_bytes(), format!("Bearer {token}").as_bytes());
        // Never longer than what the answer said (or the 60 s default).
        // (Read as leniently as the parser does: serde skips the bytes of
        // unknown fields unchecked, so the body need not be valid UTF-8.)
        #[derive(serde::Deserialize)]
        struct Said {
            expires_in: Option<i64>,
        }
        let said = serde_json::from_slice::<Said>(data)
            .ok()
            .and_then(|s| s.expires_in);
        let max = said.filter(|&s| s > 0).map_or(60, |s| s as u64);
        assert!(lifetime_s <= max, "{lifetime_s} > {max}");
    }
});
