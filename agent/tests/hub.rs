//! The agent with a hub, over real HTTP against the mock hub
//! (`hub-client`'s `MockHub`), on the real engine and registry: desired
//! digests, nudges, drain notices around the swap, reports, the registration
//! check, the event stream across a hub restart, and a hub that is down,
//! slow, garbage or refuses the token while the worker is left alone.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use hub_client::mock::{MockHub, Mode};
use hub_client::{Desired, Nudge};
use serde_json::Value;

const TOKEN: &str = "hub-test-token-1f9c";

struct Hubbed {
    s: Setup,
    hub: MockHub,
}

impl Hubbed {
    async fn new(name: &str) -> Hubbed {
        let hub = MockHub::start(Some(TOKEN.into())).await.unwrap();
        Hubbed {
            s: Setup::new(name),
            hub,
        }
    }

    /// The config with an hourly poll (only the hub and the start move the
    /// worker) and `[hub]` with `hub_extra`; the worker registers with the hub.
    fn config(&self, image: &str, worker_env: &str, hub_extra: &str, extra: &str) -> String {
        let token = self.s.dir.path().join("hub-token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let env = format!(
            "HUB_URL = \"{}\"{}{}",
            self.hub.url(),
            if worker_env.is_empty() { "" } else { ", " },
            worker_env
        );
        self.s
            .config(
                image,
                &self.s.env(&env),
                &format!(
                    "[hub]\nurl = \"{}\"\ntoken_file = \"{}\"\n{hub_extra}\n{extra}",
                    self.hub.url(),
                    token.display()
                ),
            )
            .replace("poll_interval = \"1s\"", "poll_interval = \"1h\"")
    }

    fn id(&self) -> &str {
        &self.s.agent_id
    }

    fn desired(&self, digest: &str) {
        self.hub.set_desired(
            self.id(),
            Some(Desired {
                repository: self.s.image_repo(),
                digest: digest.into(),
            }),
        );
    }

    fn nudge(&self, digest: Option<&str>) -> u64 {
        self.hub.nudge(
            self.id(),
            Nudge {
                reason: "test".into(),
                digest: digest.map(Into::into),
            },
        )
    }

    async fn wait_stream(&self, agent: &Agent, connects: usize) {
        let ok = wait_for(WAIT, || async {
            (self.hub.stream_count(self.id()) >= 1 && self.hub.connects(self.id()) >= connects)
                .then_some(())
        })
        .await;
        assert!(
            ok.is_some(),
            "no event stream from the agent\n{}",
            agent.log()
        );
    }

    /// The report events (history entries) the hub received, in order.
    fn reported_events(&self) -> Vec<Value> {
        self.hub
            .reports(self.id())
            .into_iter()
            .filter_map(|r| r.get("event").cloned())
            .collect()
    }
}

/// `agentctl check ARGS`, asked again while the agent is still finishing
/// the last update (exit 4: its commit is written a moment before it is idle).
async fn check(s: &Setup, args: &[&str]) -> Run {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = ctl(s, args).await;
        if r.code != 4 || std::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hubs_desired_digest_is_the_target_and_204_falls_back_to_the_registry() {
    let h = Hubbed::new("hub-desired").await;
    let s = &h.s;
    let v1 = s.push("v1", "stable");
    let v2 = s.push("v2", "next");
    h.desired(&v2);
    let agent = s.start_agent(&h.config("tag = \"stable\"", "", "desired_from_hub = true", ""));
    // The hub names v2: the registry's tag (v1) is not followed.
    s.wait_history(&v2, "success", &agent).await;
    let st = ctl(s, &["status", "--json"]).await.json();
    assert_eq!(st["hub"]["desired"], v2.as_str());
    assert_eq!(st["hub"]["desired_from_hub"], true);

    // No opinion (204): the registry's tag decides again, at the next check.
    h.hub.set_desired(h.id(), None);
    check(s, &["check", "--wait"]).await.expect(0);
    s.wait_running(&v1, "v1", &agent).await;
    let e = s.wait_history(&v1, "success", &agent).await;
    assert_eq!(e["trigger"], "cli");

    // A desired digest of another repository is refused, the worker kept.
    h.hub.set_desired(
        h.id(),
        Some(Desired {
            repository: "127.0.0.1:1/other/worker".into(),
            digest: v2.clone(),
        }),
    );
    let r = check(s, &["check", "--wait", "--json"]).await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stdout.contains("image.repository"), "{r:#?}");
    assert_eq!(
        s.running().await.unwrap().digest.as_deref(),
        Some(v1.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nudge_checks_at_once_and_a_nudge_naming_a_digest_deploys_it() {
    let h = Hubbed::new("hub-nudge").await;
    let s = &h.s;
    let v1 = s.push("v1", "stable");
    // The hub decides the digest (the SPEC: a digest a nudge names is
    // deployed only with desired_from_hub); it has no opinion until it names one.
    let agent = s.start_agent(&h.config("tag = \"stable\"", "", "desired_from_hub = true", ""));
    s.wait_history(&v1, "success", &agent).await;
    h.wait_stream(&agent, 1).await;

    // The tag moves; the poll is an hour away; the nudge brings it now.
    let v2 = s.push("v2", "stable");
    h.nudge(None);
    let e = s.wait_history(&v2, "success", &agent).await;
    assert_eq!(e["trigger"], "nudge");
    s.wait_running(&v2, "v2", &agent).await;

    // A nudge naming a digest means that digest, whatever the tag says.
    h.nudge(Some(&v1));
    let found = wait_for(WAIT, || async {
        s.history()
            .into_iter()
            .filter(|e| e["to"] == v1.as_str() && e["outcome"] == "success")
            .nth(1)
    })
    .await
    .unwrap_or_else(|| panic!("no second success to v1\n{}", agent.log()));
    assert_eq!(found["trigger"], "nudge");

    // Nudges respect a drain: nothing moves while drained.
    ctl(s, &["drain", "--wait"]).await.expect(0);
    let n = s.history().len();
    h.nudge(Some(&v2));
    agent.wait_log("updates held").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.history().len(), n, "{:#?}", s.history());
    assert!(s.running().await.is_none(), "still drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_notices_bracket_the_swap_and_reports_carry_every_event() {
    let h = Hubbed::new("hub-notices").await;
    let s = &h.s;
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&h.config(
        "tag = \"stable\"",
        "INFLIGHT_JOBS = \"1\", JOB_SECONDS = \"1\"",
        "",
        &s.drain_table("60s"),
    ));
    s.wait_history(&v1, "success", &agent).await;
    h.wait_stream(&agent, 1).await;
    let v2 = s.push("v2", "stable");
    h.nudge(None);
    s.wait_history(&v2, "success", &agent).await;
    // The resume notice follows the commit.
    wait_for(WAIT, || async {
        (h.hub.drains(h.id()).iter().any(|d| !d.draining)).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("no resume notice: {:#?}", h.hub.drains(h.id())));

    // drain(true) came before the old worker was told to drain and stopped;
    // drain(false) after the new one was verified.
    let calls = h.hub.received();
    let pos = |f: &dyn Fn(&hub_client::mock::Received) -> bool| calls.iter().position(f);
    let on = pos(&|c| c.call == "drain" && c.body["draining"] == true)
        .unwrap_or_else(|| panic!("no drain notice: {calls:#?}"));
    let on_seq = calls[on].seq;
    let off = pos(&|c| c.call == "drain" && c.body["draining"] == false && c.seq > on_seq)
        .unwrap_or_else(|| panic!("no resume notice after the drain notice: {calls:#?}"));
    let success = pos(&|c| {
        c.call == "report"
            && c.body["event"]["to"] == v2.as_str()
            && c.body["event"]["outcome"] == "success"
    })
    .unwrap_or_else(|| panic!("no success report: {calls:#?}"));
    // Reports go from their own task, so the success report and the resume
    // notice may reach the hub in either order; both follow the drain notice.
    assert!(
        on < success && on < off,
        "order: on {on}, success {success}, off {off}"
    );
    assert!(calls[on].body["reason"].as_str().unwrap().contains(&v2));

    // The worker's own events (ms since the epoch): when v1 got SIGTERM, when v2 started.
    let ev = s.events();
    let at = |v: &str, e: &str| {
        ev.iter()
            .find(|(_, ver, name)| ver == v && name == e)
            .map(|(ms, _, _)| *ms)
            .unwrap_or_else(|| panic!("no {v} {e} in {ev:?}"))
    };
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    assert!(
        ms(calls[on].at) <= at("v1", "sigterm"),
        "drain notice before the old worker stopped"
    );
    assert!(
        ms(calls[off].at) >= at("v2", "start"),
        "resume notice after the new worker started"
    );

    // Every history entry was reported, in order, with the status beside it.
    let history = s.history();
    let reported = h.reported_events();
    assert_eq!(reported, history, "the hub heard every history entry");
    let last = h
        .hub
        .reports(h.id())
        .into_iter()
        .rfind(|r| r.get("event").is_some())
        .unwrap();
    for k in STATUS_FIELDS {
        assert!(last.get(k).is_some(), "report lacks {k}: {last:#}");
    }
    assert_eq!(last["agent_id"], h.id());
    assert_eq!(last["event"]["trigger"], "nudge");
    assert!(last["event"]["downtime_ms"].is_u64());
    // The hub never saw the token in a report.
    assert!(!serde_json::to_string(&h.hub.reports(h.id()))
        .unwrap()
        .contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_does_not_register_is_rolled_back_and_marked_bad() {
    let h = Hubbed::new("hub-register").await;
    let s = &h.s;
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&h.config(
        "tag = \"stable\"",
        "",
        "verify_registration = true\nregistration_timeout = \"4s\"",
        "",
    ));
    s.wait_history(&v1, "success", &agent).await;
    assert_eq!(h.hub.worker(h.id()).digest.as_deref(), Some(v1.as_str()));
    h.wait_stream(&agent, 1).await;

    h.hub.refuse_registration(h.id(), true);
    let v2 = s.push("v2", "stable");
    h.nudge(None);
    let e = s.wait_history(&v2, "rolled_back", &agent).await;
    let err = e["error"].as_str().unwrap();
    assert!(
        err.contains("did not register with the hub within 4s"),
        "{err}"
    );
    assert!(s.is_marked_bad(&v2));
    s.wait_running(&v1, "v1", &agent).await;
    // The rollback told the hub to send jobs again.
    assert_eq!(h.hub.drains(h.id()).last().map(|d| d.draining), Some(false));
}

/// Waits until the agent's /metrics says `gpu_agent_hub_stream_up {want}`.
async fn wait_stream_gauge(port: u16, want: u8, agent: &Agent) {
    let line = format!("gpu_agent_hub_stream_up {want}");
    let seen = wait_for(WAIT, || async {
        let out = std::process::Command::new("curl")
            .args(["-sf", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{port}/metrics"))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == line)
            .then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "the metrics never said {line}\n{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_comes_back_after_a_hub_restart_and_gets_the_nudges_it_missed() {
    let h = Hubbed::new("hub-restart").await;
    let s = &h.s;
    let v1 = s.push("v1", "stable");
    let port = free_port();
    let cfg = h.config("tag = \"stable\"", "", "", "").replace(
        "[agent]\n",
        &format!("[agent]\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
    );
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    h.wait_stream(&agent, 1).await;
    // The metrics follow the stream: up now, down while the hub is away.
    wait_stream_gauge(port, 1, &agent).await;
    // One nudge seen on the first connection (nothing to do), so the agent has an id.
    let first = h.nudge(None);
    agent.wait_log("nudge from the hub").await;

    h.hub.stop().await;
    let v2 = s.push("v2", "stable");
    // Sent while the hub is down for the agent: kept in the hub's backlog.
    h.nudge(Some(&v2));
    let st = wait_for(WAIT, || async {
        let st = ctl(s, &["status", "--json"]).await.json();
        (st["hub"]["events"] != "connected").then_some(st)
    })
    .await
    .unwrap();
    assert!(st["hub"]["events_error"].is_string(), "{st:#}");
    wait_stream_gauge(port, 0, &agent).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.running().await.unwrap().digest.as_deref(),
        Some(v1.as_str())
    );

    h.hub.restart().await.unwrap();
    h.wait_stream(&agent, 2).await;
    wait_stream_gauge(port, 1, &agent).await;
    let e = s.wait_history(&v2, "success", &agent).await;
    assert_eq!(e["trigger"], "nudge");
    // The reconnect resumed after the last id it had seen.
    let resumed = h
        .hub
        .received()
        .into_iter()
        .filter(|c| c.call == "events")
        .nth(1)
        .unwrap();
    assert_eq!(resumed.body["last_event_id"], first.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_a_wrong_token_and_a_slow_hub_leave_the_worker_and_status_says_why() {
    let h = Hubbed::new("hub-garbage").await;
    let s = &h.s;
    let v1 = s.push("v1", "stable");
    let v2 = s.push("v2", "next");
    h.desired(&v1);
    let cfg = h.config("tag = \"stable\"", "", "desired_from_hub = true", "");
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let worker = s.running().await.unwrap();
    let history = s.history();
    // The registry's tag moves to v2: a hub that cannot be asked is not a
    // reason to follow the registry instead of the digest the hub named.
    s.push("v2", "stable");

    for (mode, expect) in [
        (Mode::Garbage, "unexpected answer"),
        (Mode::Unauthorized, "401 unauthorized"),
        (Mode::Down, "503"),
        (Mode::Slow(Duration::from_secs(8)), "no answer within"),
    ] {
        h.hub.set_mode(mode.clone());
        let r = check(s, &["check", "--wait", "--json"]).await;
        assert_eq!(r.code, 0, "{mode:?}: {r:#?}");
        let st = ctl(s, &["status", "--json"]).await.json();
        let err = st["hub"]["last_error"].as_str().unwrap_or_default();
        assert!(err.contains(expect), "{mode:?}: {err:?}");
        assert!(!err.contains(TOKEN));
        let now = s.running().await.unwrap();
        assert_eq!(
            (now.id.as_str(), now.running),
            (worker.id.as_str(), true),
            "{mode:?}"
        );
    }
    assert_eq!(s.history(), history, "nothing happened");
    assert!(!agent.log().contains(TOKEN), "the token is never logged");

    h.hub.set_mode(Mode::Normal);
    h.desired(&v2);
    check(s, &["check", "--wait"]).await.expect(0);
    s.wait_running(&v2, "v2", &agent).await;
    let st = ctl(s, &["status", "--json"]).await.json();
    assert!(st["hub"]["last_error"].is_null(), "{st:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_down_for_a_whole_update_leaves_the_worker_alone_until_it_is_back() {
    let h = Hubbed::new("hub-down").await;
    let s = &h.s;
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&h.config(
        "tag = \"stable\"",
        "",
        "verify_registration = true\nregistration_timeout = \"20s\"",
        "",
    ));
    s.wait_history(&v1, "success", &agent).await;
    let worker = s.running().await.unwrap();
    let history = s.history();

    h.hub.stop().await;
    let v2 = s.push("v2", "stable");
    let r = check(s, &["check", "--wait", "--json"]).await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stdout.contains("hub.verify_registration"), "{r:#?}");
    let st = ctl(s, &["status", "--json"]).await.json();
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("the hub cannot be asked"),
        "{st:#}"
    );
    assert_eq!(st["current_digest"], v1.as_str());
    let now = s.running().await.unwrap();
    assert_eq!(now.id, worker.id, "the worker was not touched");
    assert_eq!(s.history(), history);

    h.hub.restart().await.unwrap();
    check(s, &["check", "--wait"]).await.expect(0);
    s.wait_running(&v2, "v2", &agent).await;
    assert_eq!(h.hub.worker(h.id()).digest.as_deref(), Some(v2.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_drain_endpoint_the_hubs_in_flight_count_is_the_drain_signal() {
    let h = Hubbed::new("hub-inflight").await;
    let s = &h.s;
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&h.config("tag = \"stable\"", "", "", ""));
    s.wait_history(&v1, "success", &agent).await;
    h.hub.set_worker_in_flight(h.id(), 2);
    let v2 = s.push("v2", "stable");
    check(s, &["check"]).await.expect(0);
    let st = wait_for(WAIT, || async {
        let st = ctl(s, &["status", "--json"]).await.json();
        (st["phase"] == "draining").then_some(st)
    })
    .await;
    assert!(st.is_some(), "never draining\n{}", agent.log());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.running().await.unwrap().digest.as_deref(),
        Some(v1.as_str()),
        "waits for the jobs"
    );
    let released = SystemTime::now();
    h.hub.set_worker_in_flight(h.id(), 0);
    s.wait_history(&v2, "success", &agent).await;
    let stopped_at = s
        .events()
        .into_iter()
        .find(|(_, v, e)| v == "v1" && e == "sigterm")
        .map(|(ms, _, _)| ms)
        .unwrap();
    let released_ms = released
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        stopped_at >= released_ms,
        "the old worker stopped only after the hub counted 0 jobs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_notice_the_hub_missed_is_sent_again_at_the_next_check() {
    let h = Hubbed::new("hub-resume").await;
    let s = &h.s;
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&h.config("tag = \"stable\"", "", "", &s.drain_table("60s")));
    s.wait_history(&v1, "success", &agent).await;
    // The hub answers 503 through the whole update: the worker's own drain
    // endpoint drains it, the update goes through, the hub hears nothing.
    h.hub.set_mode(Mode::Down);
    let v2 = s.push("v2", "stable");
    check(s, &["check", "--wait"]).await.expect(0);
    s.wait_history(&v2, "success", &agent).await;
    assert!(h.hub.drains(h.id()).is_empty());
    assert_eq!(
        s.state()["hub_draining"],
        true,
        "the unsent resume is saved"
    );

    h.hub.set_mode(Mode::Normal);
    check(s, &["check", "--wait"]).await.expect(0);
    let d = h.hub.drains(h.id());
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(!d[0].draining);
    assert!(s.state().get("hub_draining").is_none(), "{:#}", s.state());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_agent_still_reports_the_update_its_stop_aborted() {
    let h = Hubbed::new("hub-flush").await;
    let s = &h.s;
    let v1 = s.push("v1", "stable");
    let mut agent = s.start_agent(&h.config(
        "tag = \"stable\"",
        "INFLIGHT_JOBS = \"5\", JOB_SECONDS = \"30\"",
        "",
        &s.drain_table("60s"),
    ));
    s.wait_history(&v1, "success", &agent).await;
    let v2 = s.push("v2", "stable");
    check(s, &["check"]).await.expect(0);
    let draining = wait_for(WAIT, || async {
        let st = ctl(s, &["status", "--json"]).await.json();
        (st["phase"] == "draining").then_some(())
    })
    .await;
    assert!(draining.is_some(), "never draining\n{}", agent.log());
    assert_eq!(agent.terminate(), Some(0));
    let aborted = h
        .reported_events()
        .into_iter()
        .find(|e| e["to"] == v2.as_str() && e["outcome"] == "aborted");
    assert!(aborted.is_some(), "{:#?}", h.reported_events());
    // The hub was told to send jobs again: the old worker keeps serving.
    assert_eq!(h.hub.drains(h.id()).last().map(|d| d.draining), Some(false));
    assert_eq!(
        s.running().await.unwrap().digest.as_deref(),
        Some(v1.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hubs_authority_is_bounded_a_named_digest_needs_desired_from_hub_and_swaps_a_budget() {
    let h = Hubbed::new("hub-bounds").await;
    let s = &h.s;
    let v1 = s.push("v1", "stable");
    let v2 = s.push("v2", "other");
    // A hub that does not decide the digest: a nudge naming one is a check.
    let mut agent = s.start_agent(&h.config("tag = \"stable\"", "", "", ""));
    s.wait_history(&v1, "success", &agent).await;
    h.wait_stream(&agent, 1).await;
    h.nudge(Some(&v2));
    agent.wait_log("the hub does not decide the digest").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !s.history().iter().any(|e| e["to"] == v2.as_str()),
        "{:#?}",
        s.history()
    );
    agent.kill9();

    // A hub that decides, with a budget of one swap an hour: the second
    // flip waits, and status says until when.
    let cfg = h.config(
        "tag = \"stable\"",
        "",
        "desired_from_hub = true\nmax_swaps_per_hour = 1",
        "",
    );
    let agent = s.start_agent(&cfg);
    h.wait_stream(&agent, 2).await;
    h.nudge(Some(&v2));
    s.wait_history(&v2, "success", &agent).await;
    h.nudge(Some(&v1));
    agent.wait_log("hub swap budget spent").await;
    let st = ctl(s, &["status", "--json"]).await.json();
    assert_eq!(st["current_digest"], v2.as_str(), "{st:#}");
}
