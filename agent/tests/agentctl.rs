//! `agentctl` as an operator runs it, against a running `gpu-agent` with the
//! real engine and registry: status and history, check and update with their
//! outcomes and exit codes, refusals while an update runs, an agent that is
//! not there, bad command lines, malformed requests on the socket, and many
//! status calls during an update.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The test's config with a one-hour poll interval: only agentctl (and the
/// check at start) finds new digests.
fn slow_poll(config: String) -> String {
    let c = config.replace("poll_interval = \"1s\"", "poll_interval = \"1h\"");
    assert_ne!(c, config, "the harness config has no 1s poll interval");
    c
}

/// An agent that polls hourly and runs v1, and v1's digest.
async fn deployed(s: &Setup, worker_extra: &str, extra: &str) -> (Agent, String) {
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&slow_poll(s.config(
        "tag = \"stable\"",
        worker_extra,
        extra,
    )));
    s.wait_running(&v1, "v1", &agent).await;
    s.wait_history(&v1, "success", &agent).await;
    (agent, v1)
}

/// A worker whose drain takes about six seconds (three jobs, two seconds each).
fn slow_drain(s: &Setup) -> (String, String) {
    (
        s.env("INFLIGHT_JOBS = \"3\", JOB_SECONDS = \"2\""),
        s.drain_table("60s"),
    )
}

/// Waits until `status --json` shows `phase`.
async fn wait_phase(s: &Setup, phase: &str, agent: &Agent) {
    let seen = wait_for(WAIT, || async {
        let r = ctl(s, &["status", "--json"]).await;
        (r.code == 0 && r.json()["phase"] == phase).then_some(())
    })
    .await;
    if seen.is_none() {
        panic!("the agent never showed phase {phase}:\n{}", agent.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_every_spec_field_after_the_first_deploy() {
    let s = Setup::new("ctlstatus");
    let (_agent, v1) = deployed(&s, &s.env(""), "").await;

    // The history line comes before the loop plans its next check.
    let r = wait_for(WAIT, || async {
        let r = ctl(&s, &["status", "--json"]).await;
        let st = r.json();
        (st["phase"] == "idle"
            && st["next_check"]
                .as_str()
                .zip(st["last_check"].as_str())
                .is_some_and(|(n, l)| n > l))
        .then_some(r)
    })
    .await
    .expect("status with the next check planned");
    r.expect(0);
    let st = r.json();
    for f in STATUS_FIELDS {
        assert!(st.get(f).is_some(), "status lacks {f}: {st:#}");
    }
    assert_eq!(st["agent_id"], s.agent_id);
    assert_eq!(st["phase"], "idle");
    assert_eq!(st["current_digest"], v1);
    assert_eq!(st["last_good_digest"], v1);
    assert_eq!(st["drained"], false);
    assert!(st["pinned"].is_null(), "{st:#}");
    assert_eq!(st["bad_digests"], serde_json::json!([]));
    assert!(st["last_error"].is_null(), "{st:#}");
    let time = |f: &str| {
        let t = st[f]
            .as_str()
            .unwrap_or_else(|| panic!("{f} is not a string: {st:#}"));
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{f} {t:?} is not RFC 3339: {e}"))
    };
    let (last, next) = (time("last_check"), time("next_check"));
    let now = time::OffsetDateTime::now_utc();
    assert!(
        last <= now && now - last < time::Duration::minutes(5),
        "{st:#}"
    );
    // Polled hourly: the next check is about an hour after the last.
    assert!(next - last > time::Duration::minutes(50), "{st:#}");
    // Pretty-printed, as the server wrote it.
    assert!(r.stdout.starts_with("{\n  \"agent_id\": "), "{}", r.stdout);

    let r = ctl(&s, &["status"]).await;
    r.expect(0);
    assert!(r.stdout.contains(&v1), "{r:#?}");
    assert!(r.stdout.contains("phase:"), "{r:#?}");
    assert!(r.stdout.contains("idle"), "{r:#?}");
    assert!(r.stderr.is_empty(), "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_the_updates_oldest_first() {
    let s = Setup::new("ctlhistory");
    let (_agent, v1) = deployed(&s, &s.env(""), "").await;

    let r = ctl(&s, &["history", "--json"]).await;
    r.expect(0);
    let h = r.json();
    let entries = h
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {h:#}"));
    let e = entries
        .iter()
        .find(|e| e["to"] == v1)
        .unwrap_or_else(|| panic!("no entry for {v1}: {h:#}"));
    assert_eq!(e["kind"], "update");
    assert!(e["from"].is_null(), "{e}");
    assert_eq!(e["outcome"], "success");
    assert_eq!(e["trigger"], "startup");
    assert!(e["error"].is_null(), "{e}");
    assert!(e["downtime_ms"].as_u64().is_some(), "{e}");
    assert!(e["at"].as_str().is_some(), "{e}");

    // A second entry, so that -n 1 has something to leave out.
    let v2 = s.push("v2", "stable");
    ctl(&s, &["check", "--wait", "--json"]).await.expect(0);
    let r = ctl(&s, &["history", "-n", "1", "--json"]).await;
    r.expect(0);
    let last = r.json();
    let last = last.as_array().unwrap();
    assert_eq!(last.len(), 1, "{last:#?}");
    assert_eq!(last[0]["to"], v2, "-n 1 is not the newest entry: {last:#?}");
    let all = ctl(&s, &["history", "--json"]).await.json();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all:#}");
    assert_eq!(all[0]["to"], v1, "not oldest first: {all:#}");

    let r = ctl(&s, &["history"]).await;
    r.expect(0);
    let short = |d: &str| d["sha256:".len()..][..12].to_string();
    assert!(r.stdout.contains(&short(&v1)), "{r:#?}");
    assert!(
        r.stdout
            .contains(&format!("{} → {}", short(&v1), short(&v2))),
        "{r:#?}"
    );
    assert!(r.stdout.contains("success"), "{r:#?}");
    assert_eq!(
        r.stdout.lines().count(),
        3,
        "a header and two entries: {r:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_wait_deploys_a_new_digest_and_says_so() {
    let s = Setup::new("ctlcheck");
    let (agent, v1) = deployed(&s, &s.env(""), "").await;
    let v2 = s.push("v2", "stable");
    // The hourly poll will not find it; the check does.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.running().await.unwrap().digest.as_deref(),
        Some(v1.as_str())
    );

    let r = ctl(&s, &["check", "--wait", "--json"]).await;
    r.expect(0);
    let a = r.json();
    assert_eq!(a["outcome"], "updated", "{a:#}");
    assert_eq!(a["digest"], v2, "{a:#}");
    // The update has ended when check --wait returns.
    let c = s.running().await.unwrap();
    assert_eq!(c.digest.as_deref(), Some(v2.as_str()), "{}", agent.log());
    assert_eq!(s.health().await.unwrap()["version"], "v2");
    let e = s.wait_history(&v2, "success", &agent).await;
    assert_eq!(e["trigger"], "cli");

    // Nothing new: one line saying so.
    let r = ctl(&s, &["check", "--wait"]).await;
    r.expect(0);
    assert!(r.stdout.starts_with("up to date"), "{r:#?}");
    assert_eq!(r.stdout.lines().count(), 1, "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_to_a_broken_digest_rolls_back_and_exits_1() {
    let s = Setup::new("ctlupdate");
    let (agent, v1) = deployed(&s, &s.env(""), "").await;
    // Not under the followed tag: only the operator deploys it.
    let bad = s.push("broken", "broken");

    let r = ctl(&s, &["update", "--digest", &bad, "--json"]).await;
    r.expect(1);
    let a = r.json();
    assert_eq!(a["outcome"], "rolled_back", "{a:#}");
    assert!(
        a["error"]
            .as_str()
            .is_some_and(|e| e.contains("not healthy within")),
        "{a:#}"
    );
    // Back on the old digest when update returns.
    let c = s.running().await.unwrap();
    assert_eq!(c.digest.as_deref(), Some(v1.as_str()), "{}", agent.log());
    assert_eq!(s.health().await.unwrap()["version"], "v1");
    let st = ctl(&s, &["status", "--json"]).await.json();
    assert_eq!(st["current_digest"], v1);
    assert!(
        st["bad_digests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["digest"] == bad && b["reason"].as_str().is_some()),
        "{st:#}"
    );
    let h = ctl(&s, &["history", "-n", "1", "--json"]).await.json();
    assert_eq!(h[0]["to"], bad);
    assert_eq!(h[0]["outcome"], "rolled_back");
    assert_eq!(h[0]["trigger"], "cli");

    // Deploying what runs already is done at once.
    let r = ctl(&s, &["update", "--digest", &v1]).await;
    r.expect(0);
    assert!(r.stdout.starts_with("up to date"), "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_while_an_update_runs_is_refused_with_exit_4() {
    let s = Setup::new("ctlbusy");
    let (env, drain) = slow_drain(&s);
    let (agent, _v1) = deployed(&s, &env, &drain).await;
    let v2 = s.push("v2", "stable");
    let v3 = s.push("v3", "other");

    let r = ctl(&s, &["check"]).await;
    r.expect(0);
    assert!(r.stdout.starts_with("check started"), "{r:#?}");
    wait_phase(&s, "draining", &agent).await;

    let r = ctl(&s, &["update", "--digest", &v3]).await;
    r.expect(4);
    assert!(r.stderr.starts_with("agentctl: "), "{r:#?}");
    assert!(r.stderr.contains("in progress"), "{r:#?}");
    assert!(r.stdout.is_empty(), "{r:#?}");
    let r = ctl(&s, &["check", "--wait", "--json"]).await;
    r.expect(4);
    assert!(r.stderr.contains("in progress"), "{r:#?}");

    // The update that was running goes on undisturbed.
    s.wait_running(&v2, "v2", &agent).await;
    s.wait_history(&v2, "success", &agent).await;
    assert!(
        !s.history().iter().any(|e| e["to"] == v3),
        "{:#?}",
        s.history()
    );
}

#[tokio::test]
async fn no_agent_is_exit_3_and_bad_command_lines_are_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let missing_s = missing.to_str().unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));
    for args in [
        &["status"][..],
        &["history", "-n", "3"],
        &["check"],
        &["check", "--wait"],
        &["update", "--digest", &digest],
        &["status", "--json"],
    ] {
        let mut all = vec!["--socket", missing_s];
        all.extend_from_slice(args);
        let r = agentctl(&all, &[]).await;
        r.expect(3);
        assert!(
            r.stderr.starts_with(&format!(
                "agentctl: cannot reach gpu-agent at {missing_s}: "
            )),
            "{args:?}: {r:#?}"
        );
        assert!(r.stderr.contains("is the agent running?"), "{r:#?}");
        if args.contains(&"--json") {
            // A script reading stdout gets JSON (tests/operator.rs).
            let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
            assert_eq!(v["exit_code"], 3, "{r:#?}");
        } else {
            assert!(r.stdout.is_empty(), "{r:#?}");
        }
    }
    // The socket can come from the environment.
    let r = agentctl(&["status"], &[("GPU_AGENT_SOCKET", missing_s)]).await;
    r.expect(3);
    assert!(r.stderr.contains(missing_s), "{r:#?}");
    // A socket file nobody listens on (an agent that died).
    let dead = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let r = agentctl(&["--socket", dead.to_str().unwrap(), "status"], &[]).await;
    r.expect(3);
    assert!(r.stderr.contains("refused"), "{r:#?}");

    // Usage errors: clap's exit code 2, before any connection.
    for args in [
        &["frobnicate"][..],
        &[],
        &["status", "--frobnicate"],
        &["--frobnicate", "status"],
        &["update"],
        &["update", "--digest", "latest"],
        &["update", "--digest", "sha256:abc"],
        &["update", "--digest", &digest.to_uppercase()],
        &["history", "-n", "0"],
        &["history", "-n", "many"],
    ] {
        let mut all = vec!["--socket", missing_s];
        all.extend_from_slice(args);
        let r = agentctl(&all, &[]).await;
        r.expect(2);
        assert!(!r.stderr.contains("cannot reach"), "{args:?}: {r:#?}");
    }
    let r = agentctl(&["update", "--digest", "latest"], &[]).await;
    assert!(r.stderr.contains("sha256:"), "{r:#?}");

    // Help explains the commands.
    let r = agentctl(&["--help"], &[]).await;
    r.expect(0);
    for word in ["status", "check", "update", "history", "--socket", "--json"] {
        assert!(r.stdout.contains(word), "--help lacks {word}: {}", r.stdout);
    }
    let r = agentctl(&["update", "--help"], &[]).await;
    r.expect(0);
    assert!(r.stdout.contains("roll"), "{}", r.stdout);
}

/// Sends `request` as it is on the socket; gives the status code and the body.
fn raw_http(sock: &Path, request: &[u8]) -> (u16, String) {
    let mut c = std::os::unix::net::UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The `error` text of a JSON error body (chunked or not).
fn error_text(body: &str) -> String {
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if a < b => &body[a..=b],
        _ => panic!("no JSON object in {body:?}"),
    };
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json:?}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error text in {v}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_the_agent_keeps_answering() {
    let s = Setup::new("ctlraw");
    let (agent, v1) = deployed(&s, &s.env(""), "").await;
    let sock = socket(&s);
    let digest = format!("sha256:{}", "ab".repeat(32));
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (post("/v1/update", r#"{"digest": 5}"#), 400),
        (post("/v1/update", "not json"), 400),
        (post("/v1/update", r#"{"digest": "latest"}"#), 400),
        (post("/v1/update", "{}"), 400),
        (
            post(
                "/v1/update",
                &format!(r#"{{"digest": "{digest}", "now": true}}"#),
            ),
            400,
        ),
        (post("/v1/check", r#"{"wait": "yes"}"#), 400),
        (post("/v1/check", "[1, 2"), 400),
        (
            b"GET /v1/history?n=many HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            404,
        ),
    ];
    for (request, want) in cases {
        let shown = String::from_utf8_lossy(&request).into_owned();
        let sock = sock.clone();
        let (code, body) = tokio::task::spawn_blocking(move || raw_http(&sock, &request))
            .await
            .unwrap();
        assert_eq!(code, want, "{shown:?} got {code} {body:?}");
        let text = error_text(&body);
        assert!(!text.is_empty(), "{shown:?}");
    }
    // Not HTTP at all, and a request cut off halfway.
    let s2 = sock.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = std::os::unix::net::UnixStream::connect(&s2).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.write_all(b"HELLO THERE\r\n\r\n");
        let _ = c.read_to_end(&mut Vec::new());
        let mut c = std::os::unix::net::UnixStream::connect(&s2).unwrap();
        let _ = c.write_all(b"POST /v1/update HTTP/1.1\r\nContent-Length: 500\r\n\r\n{\"dig");
    })
    .await
    .unwrap();

    let r = ctl(&s, &["status", "--json"]).await;
    r.expect(0);
    assert_eq!(r.json()["current_digest"], v1);
    // None of it started an update.
    assert_eq!(s.history().len(), 1, "{:#?}", s.history());
    assert_eq!(
        s.running().await.unwrap().digest.as_deref(),
        Some(v1.as_str()),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_status_calls_during_an_update_all_answer() {
    let s = Setup::new("ctlmany");
    let (env, drain) = slow_drain(&s);
    let (agent, _v1) = deployed(&s, &env, &drain).await;
    let v2 = s.push("v2", "stable");

    // check --wait in text mode: progress on stderr, the outcome on stdout.
    let sock = socket(&s);
    let waiting = tokio::spawn(async move {
        agentctl(
            &["--socket", sock.to_str().unwrap(), "check", "--wait"],
            &[],
        )
        .await
    });
    wait_phase(&s, "draining", &agent).await;

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let sock = socket(&s);
        calls.spawn(async move {
            agentctl(
                &["--socket", sock.to_str().unwrap(), "status", "--json"],
                &[],
            )
            .await
        });
    }
    let mut busy = 0;
    while let Some(r) = calls.join_next().await {
        let r = r.unwrap();
        r.expect(0);
        let st = r.json();
        for f in STATUS_FIELDS {
            assert!(st.get(f).is_some(), "status lacks {f}: {st:#}");
        }
        if st["phase"] != "idle" {
            busy += 1;
        }
    }
    assert!(busy > 0, "no status call saw the update");

    let r = waiting.await.unwrap();
    r.expect(0);
    assert!(r.stdout.starts_with("updated: the worker runs "), "{r:#?}");
    assert!(r.stdout.contains(&v2), "{r:#?}");
    assert!(
        r.stderr
            .contains("waiting for the update to end (phase: draining"),
        "{r:#?}"
    );
    s.wait_running(&v2, "v2", &agent).await;
}
