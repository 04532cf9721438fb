//! `WWW-Authenticate` challenges of a registry's 401 (registry/auth.rs:
//! parse_www_authenticate, pick_challenge). Input: header values, one a line.
#![no_main]

use gpu_agent::fuzzing::registry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let values: Vec<&str> = text.split('\n').collect();
    let (parsed, picked) = registry::challenges(&values);
    for challenges in &parsed {
        for (scheme, params) in challenges {
            assert!(!scheme.is_empty());
            assert!(!scheme.contains(|c: char| c.is_ascii_whitespace() || ",=\"".contains(c)));
            for (name, _) in params {
                assert!(!name.is_empty());
                assert_eq!(name, &name.to_ascii_lowercase());
            }
        }
    }
    match picked {
        Ok((scheme, realm, _, _)) if scheme == "bearer" => {
            assert!(!realm.is_empty());
            // The realm is one of a Bearer challenge's parameters.
            assert!(parsed.iter().flatten().any(|(s, params)| {
                s.eq_ignore_ascii_case("bearer")
                    && params.iter().any(|(k, v)| k == "realm" && *v == realm)
            }));
        }
        Ok((scheme, ..)) => {
            assert_eq!(scheme, "basic");
            assert!(parsed
                .iter()
                .flatten()
                .any(|(s, _)| s.eq_ignore_ascii_case("basic")));
        }
        Err(why) => assert!(!why.is_empty()),
    }
});
