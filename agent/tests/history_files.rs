//! The history survives anything (the fault matrix, cases 50-51): lines torn
//! by a crash, cut inside a UTF-8 character or plain garbage are skipped by
//! `agentctl history` and by a state rebuilt from the history; past
//! `agent.history_max` the history is rotated with the older part kept
//! beside it, and `agentctl history` (whole, or `-n`, read backwards) reads
//! both. The real agent binary, real files, the test engine and registry.

mod common;

use common::*;
use serde_json::Value;

/// One history line as the agent writes it.
fn line(kind: &str, to: &str, outcome: &str, error: Option<&str>) -> String {
    serde_json::json!({
        "at": "2026-01-01T00:00:00Z", "kind": kind, "from": null, "to": to,
        "outcome": outcome, "trigger": "poll", "error": error, "downtime_ms": 5,
    })
    .to_string()
}

async fn history(s: &Setup, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["history", "--json"];
    all.extend_from_slice(args);
    let run = ctl(s, &all).await;
    run.expect(0);
    run.json().as_array().expect("a list").clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn torn_and_invalid_history_lines_never_break_history_or_a_rebuild() {
    let s = Setup::new("hist-torn");
    let d1 = s.push("v1", "latest");
    let bad = format!("sha256:{}", "b".repeat(64));
    let rolled = line("update", &bad, "rolled_back", Some("température élevée"));
    let cut = rolled.find('é').unwrap() + 1; // inside the two bytes of "é"
    let mut bytes = Vec::new();
    bytes.extend_from_slice(line("update", &d1, "success", None).as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(rolled.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(&rolled.as_bytes()[..cut]);
    bytes.push(b'\n');
    bytes.extend_from_slice(b"\xff\xfe{\"at\": garbage\n\n");
    // A crash mid-append: the last line ends inside a character.
    bytes.extend_from_slice(&rolled.as_bytes()[..cut]);
    std::fs::create_dir_all(s.state_dir()).unwrap();
    std::fs::write(s.state_dir().join("history.jsonl"), &bytes).unwrap();
    // The state is lost too: it is rebuilt from that history.
    std::fs::write(
        s.state_dir().join("state.json"),
        b"{\"current_digest\": \"sha",
    )
    .unwrap();

    let agent = s.start_agent(&s.config("", &s.env(""), ""));
    s.wait_running(&d1, "v1", &agent).await;
    assert!(
        agent.log().contains("state rebuilt from the history"),
        "{}",
        agent.log()
    );
    assert!(
        s.is_marked_bad(&bad),
        "the bad mark of the history is kept: {:#}",
        s.state()
    );

    let h = history(&s, &[]).await;
    assert_eq!(h.len(), 2, "{h:#?}");
    assert_eq!(h[0]["to"], d1);
    assert_eq!(h[1]["error"], "température élevée");
    assert_eq!(history(&s, &["-n", "1"]).await, h[1..].to_vec());
    assert_eq!(history(&s, &["-n", "5"]).await, h);
    let table = ctl(&s, &["history"]).await;
    table.expect(0);
    assert!(table.stdout.contains("rolled_back"), "{table:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_history_is_rotated_at_history_max_and_read_across_both_parts() {
    let s = Setup::new("hist-rotate");
    let d1 = s.push("v1", "latest");
    // A long-lived host: the history is just under agent.history_max (64k).
    let max = 64 * 1024;
    let mut text = String::new();
    let mut n = 0;
    loop {
        let l = line("update", &d1, "success", Some(&format!("entry {n}")));
        if text.len() + l.len() + 1 > max - 100 {
            break;
        }
        text.push_str(&l);
        text.push('\n');
        n += 1;
    }
    std::fs::create_dir_all(s.state_dir()).unwrap();
    std::fs::write(s.state_dir().join("history.jsonl"), &text).unwrap();
    let config = s
        .config("", &s.env(""), "")
        .replace("[agent]\n", "[agent]\nhistory_max = \"64k\"\n");
    // The first deploy's entry does not fit: the history is rotated first.
    let agent = s.start_agent(&config);
    s.wait_running(&d1, "v1", &agent).await;
    let read = |name: &str| std::fs::read_to_string(s.state_dir().join(name)).unwrap_or_default();
    assert!(
        wait_for(WAIT, || async {
            read("history.jsonl").contains("\"startup\"").then_some(())
        })
        .await
        .is_some(),
        "no history entry for the deploy:\n{}",
        agent.log()
    );
    let old = read("history.jsonl.1");
    assert!(
        old == text,
        "the older part is kept beside, as it was: {} bytes, {} expected",
        old.len(),
        text.len()
    );
    assert_eq!(read("history.jsonl").lines().count(), 1);
    assert!(agent.log().contains("history rotated"), "{}", agent.log());

    let h = history(&s, &[]).await;
    assert_eq!(h.len(), n + 1);
    assert_eq!(h[n]["to"], d1);
    assert_eq!(h[n]["trigger"], "startup");
    let tail = history(&s, &["-n", "3"]).await;
    assert_eq!(tail, h[n - 2..].to_vec());
    assert_eq!(tail[0]["error"], format!("entry {}", n - 2));
}
