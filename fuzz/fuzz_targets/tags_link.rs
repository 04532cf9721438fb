//! Tag lists and their `Link` pagination (registry/tags.rs: parse_tag_list,
//! parse_next_link, parse_version_tag, select_version).
//!
//! Input: a selector byte, then a `Link` header value or a `tags/list` body.
#![no_main]

use gpu_agent::fuzzing::registry;
use gpu_agent::registry::select_version;
use libfuzzer_sys::fuzz_target;
use semver::VersionReq;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        let Ok(header) = std::str::from_utf8(rest) else {
            return;
        };
        if let Some(target) = registry::next_link(header) {
            assert!(header.contains(target.as_str()));
            assert!(!target.contains('>'));
        }
        return;
    }
    let Ok(tags) = registry::tag_list(rest) else {
        return;
    };
    for tag in &tags {
        if let Some(v) = registry::version_tag(tag) {
            let s = tag.strip_prefix('v').unwrap_or(tag);
            assert!(
                s.starts_with(|c: char| c.is_ascii_digit()),
                "{tag:?} -> {v}"
            );
        }
    }
    for req in ["*", "^1", ">=0.0.0-0", "~2.3", "<1.0.0"] {
        let req = VersionReq::parse(req).unwrap();
        if let Some((tag, v)) = select_version(&tags, &req) {
            assert!(tags.contains(&tag));
            assert!(req.matches(&v));
            assert_eq!(registry::version_tag(&tag), Some(v.clone()));
            // Nothing in the list matching the range is higher.
            for other in &tags {
                if let Some(o) = registry::version_tag(other).filter(|o| req.matches(o)) {
                    assert!(o <= v, "{other} beats {tag}");
                }
            }
        }
    }
});
