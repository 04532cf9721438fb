//! `agentctl check --dry-run` and `agentctl update --dry-run` against a
//! running `gpu-agent` on the real engine and registry: both say they would
//! update, change nothing an operator or the agent can see (state.json and
//! history.jsonl bytes and mtimes, the containers, the images,
//! `agentctl status --json`), and the check then does what they said; a dry
//! run is refused while an update runs and names the gate that would refuse
//! (a maintenance drain).
//!
//! The agent polls hourly, and every snapshot is taken once it is idle after
//! its start-up check (phase idle, the next check planned an hour after the
//! last, the first deploy in the history): nothing but the dry run could
//! change what is compared.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::SystemTime;

use common::*;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Bytes, mtime and inode of a file.
type Seen = (Vec<u8>, SystemTime, u64);

fn seen(path: &std::path::Path) -> Seen {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (std::fs::read(path).unwrap(), m.modified().unwrap(), m.ino())
}

/// What a dry run could change, seen from outside the agent.
#[derive(Debug, PartialEq)]
struct Outside {
    state: Seen,
    history: Seen,
    /// `id name state started_at restart_count` of each of the agent's containers.
    containers: Vec<String>,
    /// `repository@digest image-id` of this test's repository.
    images: Vec<String>,
    status: Value,
}

async fn outside(s: &Setup) -> Outside {
    let ids = docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label=gpu-agent.agent={}", s.agent_id),
    ]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    let mut containers: Vec<String> = if ids.is_empty() {
        Vec::new()
    } else {
        let mut args = vec![
            "inspect",
            "--format",
            "{{.Id}} {{.Name}} {{.State.Status}} {{.State.StartedAt}} {{.RestartCount}}",
        ];
        args.extend(&ids);
        docker(&args).lines().map(str::to_string).collect()
    };
    containers.sort();
    let repo = format!("{}@", s.image_repo());
    let mut images: Vec<String> = docker(&[
        "images",
        "--digests",
        "--no-trunc",
        "--format",
        "{{.Repository}}@{{.Digest}} {{.ID}}",
    ])
    .lines()
    .filter(|l| l.starts_with(&repo))
    .map(str::to_string)
    .collect();
    images.sort();
    let st = ctl(s, &["status", "--json"]).await;
    st.expect(0);
    Outside {
        state: seen(&s.state_dir().join("state.json")),
        history: seen(&s.state_dir().join("history.jsonl")),
        containers,
        images,
        status: st.json(),
    }
}

/// Waits until the agent rests: `phase`, the next check planned about an
/// hour after the last (the loop has finished its turn), and a history entry
/// of `kind` last.
async fn wait_rest(s: &Setup, phase: &str, kind: &str, agent: &Agent) {
    let time = |v: &Value| {
        v.as_str()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
    };
    let rested = wait_for(WAIT, || async {
        let st = ctl(s, &["status", "--json"]).await;
        let st = (st.code == 0).then(|| st.json())?;
        let (last, next) = (time(&st["last_check"])?, time(&st["next_check"])?);
        let last_entry = s.history().pop()?;
        (st["phase"] == phase
            && next - last > time::Duration::minutes(50)
            && last_entry["kind"] == kind)
            .then_some(())
    })
    .await;
    if rested.is_none() {
        panic!(
            "the agent never rested in {phase} after a {kind}: {:#}\nhistory: {:#?}\n{}",
            status(s).await,
            s.history(),
            agent.log()
        );
    }
}

/// The verdict and reason of gate `name` in a `--json` dry run.
#[track_caller]
fn gate(r: &Value, name: &str) -> (String, String) {
    let g = r["gates"]
        .as_array()
        .and_then(|a| a.iter().find(|g| g["gate"] == name))
        .unwrap_or_else(|| panic!("no gate {name}: {r:#}"));
    (
        g["verdict"].as_str().unwrap_or_default().to_string(),
        g["reason"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_change_nothing_and_the_check_then_does_what_they_said() {
    let s = Setup::new("dryrun");
    // A drain of about six seconds: time to ask for a dry run during it.
    let env = s.env("INFLIGHT_JOBS = \"3\", JOB_SECONDS = \"2\"");
    let config = s.config("tag = \"stable\"", &env, &s.drain_table("60s"));
    let hourly = config.replace("poll_interval = \"1s\"", "poll_interval = \"1h\"");
    assert_ne!(hourly, config);
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&hourly);
    s.wait_running(&v1, "v1", &agent).await;
    let first = s.wait_history(&v1, "success", &agent).await;
    assert_eq!(first["trigger"], "startup");
    wait_rest(&s, "idle", "update", &agent).await;
    let v2 = s.push("v2", "stable");

    let before = outside(&s).await;
    let r = ctl(&s, &["check", "--dry-run", "--json"]).await;
    r.expect(0);
    let r = r.json();
    assert_eq!(r["verdict"], "would_update", "{r:#}");
    assert_eq!(r["action"], "check");
    assert_eq!(r["current_digest"], v1);
    assert_eq!(r["target"]["digest"], v2, "{r:#}");
    assert_eq!(r["target"]["decided_by"], "tag");
    assert_eq!(r["target"]["detail"], "tag stable");
    assert_eq!(r["pull"]["image"], format!("{}@{v2}", s.image_repo()));
    assert_eq!(r["pull"]["present"], false, "{r:#}");
    let gates = r["gates"].as_array().unwrap();
    assert_eq!(gates.len(), 10, "{r:#}");
    assert!(gates.iter().all(|g| g["verdict"] == "pass"), "{r:#}");

    let r = ctl(&s, &["update", "--digest", &v2, "--dry-run", "--json"]).await;
    r.expect(0);
    let r = r.json();
    assert_eq!(r["verdict"], "would_update", "{r:#}");
    assert_eq!(r["action"], "update");
    assert_eq!(r["target"]["decided_by"], "operator");

    let r = ctl(&s, &["check", "--dry-run"]).await;
    r.expect(0);
    assert!(
        r.stdout
            .starts_with("dry run of agentctl check (nothing was changed)"),
        "{r:#?}"
    );
    assert!(
        r.stdout.contains("would_update") && r.stdout.contains(&v2),
        "{r:#?}"
    );
    let after = outside(&s).await;
    assert_eq!(before, after, "a dry run changed something");

    // The check does what the dry runs said; while it runs, a dry run is refused.
    let during = async {
        let draining = wait_for(WAIT, || async {
            (status(&s).await["phase"] == "draining").then_some(())
        })
        .await;
        assert!(draining.is_some(), "never drained:\n{}", agent.log());
        ctl(&s, &["check", "--dry-run"]).await
    };
    let (checked, refused) = tokio::join!(ctl(&s, &["check", "--wait", "--json"]), during);
    refused.expect(4);
    assert!(refused.stderr.contains("in progress"), "{refused:#?}");
    checked.expect(0);
    assert_eq!(checked.json()["outcome"], "updated", "{checked:#?}");
    s.wait_running(&v2, "v2", &agent).await;
    let e = s.history().pop().unwrap();
    assert_eq!(
        (
            e["to"].as_str(),
            e["from"].as_str(),
            e["outcome"].as_str(),
            e["trigger"].as_str()
        ),
        (
            Some(v2.as_str()),
            Some(v1.as_str()),
            Some("success"),
            Some("cli")
        ),
        "{e:#}"
    );

    // Drained, a dry run names the gate that holds it, and changes nothing either.
    ctl(&s, &["drain", "--wait", "--reason", "dry run test"])
        .await
        .expect(0);
    wait_rest(&s, "drained", "drain", &agent).await;
    let before = outside(&s).await;
    for args in [
        vec!["check", "--dry-run", "--json"],
        vec!["update", "--digest", &v1, "--dry-run", "--json"],
    ] {
        let r = ctl(&s, &args).await;
        r.expect(0);
        let r = r.json();
        assert_eq!(r["verdict"], "would_refuse", "{r:#}");
        let (verdict, why) = gate(&r, "held");
        assert_eq!(verdict, "would_refuse", "{r:#}");
        assert!(
            why.contains("drained") && why.contains("agentctl undrain"),
            "{why}"
        );
        assert!(r["summary"].as_str().unwrap().contains("held"), "{r:#}");
    }
    assert_eq!(before, outside(&s).await, "a dry run changed something");
}
