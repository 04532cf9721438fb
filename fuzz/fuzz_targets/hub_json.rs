//! The hub's JSON bodies (hub-client/src/wire.rs): Desired and its checks,
//! Nudge::parse, WorkerView, DrainNotice and Report. What parses must
//! re-serialise to JSON that parses again to the same value.
//!
//! Input: a selector byte, then the body.
#![no_main]

use hub_client::wire::is_sha256_digest;
use hub_client::{Desired, DrainNotice, Nudge, Report, WorkerView};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => {
            // As HubClient::desired reads it: the JSON, then validate().
            let Ok(d) = serde_json::from_slice::<Desired>(body) else {
                return;
            };
            if d.validate().is_ok() {
                assert!(is_sha256_digest(&d.digest));
                assert!(!d.repository.trim().is_empty());
                assert!(roundtrip(&d).validate().is_ok());
            }
        }
        1 => {
            let Ok(text) = std::str::from_utf8(body) else {
                return;
            };
            if let Ok(n) = Nudge::parse(text) {
                assert!(n.digest.as_deref().is_none_or(is_sha256_digest));
                let again = Nudge::parse(&serde_json::to_string(&n).unwrap()).unwrap();
                assert_eq!(again.digest, n.digest);
                // The reason is escaped and capped (hub_client::text): a
                // reason within the cap comes back the same; a cut one stays cut.
                if n.reason.ends_with(" more characters)") {
                    assert!(again.reason.ends_with(" more characters)"), "{again:?}");
                } else {
                    assert_eq!(again, n);
                }
            }
        }
        2 => {
            if let Ok(w) = serde_json::from_slice::<WorkerView>(body) {
                roundtrip(&w);
            }
        }
        3 => {
            if let Ok(n) = serde_json::from_slice::<DrainNotice>(body) {
                roundtrip(&n);
            }
        }
        _ => {
            if let Ok(r) = serde_json::from_slice::<Report>(body) {
                // serde_json (without its float_roundtrip feature) may read a
                // float back one ulp off: numbers are compared within that.
                let json = serde_json::to_vec(&r).unwrap();
                let again: Report = serde_json::from_slice(&json).unwrap();
                assert_eq!(again.event.is_some(), r.event.is_some());
                let (a, b) = (
                    serde_json::to_value(&again).unwrap(),
                    serde_json::to_value(&r).unwrap(),
                );
                assert!(same(&a, &b), "{a} != {b}");
            }
        }
    }
});

/// Serialises `v`, parses it again and checks it is the same value.
fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) -> T {
    let json = serde_json::to_vec(v).unwrap();
    let again: T = serde_json::from_slice(&json).unwrap();
    assert_eq!(&again, v, "{}", String::from_utf8_lossy(&json));
    again
}

/// Equal JSON values, floats within a relative 1e-15.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}
