//! What the agent reads from a registry's manifest answers. It never parses a
//! manifest or index body (a HEAD gives the digest; the engine pulls), so this
//! covers the HEAD answer's `Content-Type` and `Docker-Content-Digest`, the
//! error body of a refused request, and the credentials it asks for: a
//! credential helper's answer and a docker `config.json`.
//!
//! Input: a selector byte, then the bytes of that answer.
#![no_main]

use gpu_agent::fuzzing::registry;
use gpu_agent::registry::is_sha256_digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => head(rest),
        1 => {
            let detail = registry::error_detail(rest);
            // One line, whitespace collapsed, bounded (300 shown characters
            // and the marker saying how many more were cut).
            assert!(detail.chars().count() <= 340, "{detail:?}");
            assert!(
                !detail.contains('\n') && !detail.contains("  "),
                "{detail:?}"
            );
        }
        2 => {
            if let Ok((_, secret)) = registry::helper_answer(rest) {
                assert!(!secret.is_empty());
            }
        }
        _ => {
            for host in ["docker.io", "registry.example.com:5000", "ghcr.io"] {
                if let Ok((helper, inline)) = registry::docker_config(rest, host) {
                    assert!(helper.is_none_or(|h| !h.is_empty()));
                    if let Ok(Some((user, secret))) = inline {
                        assert!(!user.is_empty() && !secret.is_empty());
                    }
                }
            }
        }
    }
});

/// `[flags] content-type \n digest`: bit 0 sends the Content-Type, bit 1 the digest.
fn head(rest: &[u8]) {
    let Some((&flags, rest)) = rest.split_first() else {
        return;
    };
    let (ct, digest) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let ct = (flags & 1 != 0).then_some(ct);
    let digest_bytes = (flags & 2 != 0).then_some(digest);
    let Some(answer) = registry::manifest_head(ct, digest_bytes) else {
        return; // not a header value: the HTTP layer refuses it first
    };
    if let Ok(d) = answer {
        assert!(is_sha256_digest(&d), "{d:?}");
        let sent = std::str::from_utf8(digest_bytes.unwrap()).unwrap();
        assert_eq!(sent.trim(), d);
    }
}
