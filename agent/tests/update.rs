//! The core update loop against the real engine and a real registry:
//! tag moves, broken and crashing images, drains, semver, auth, bad input.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_move_swaps_the_worker() {
    let s = Setup::new("tagmove");
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&s.config("tag = \"stable\"", &s.env(""), ""));
    s.wait_running(&v1, "v1", &agent).await;
    let first = s.wait_history(&v1, "success", &agent).await;
    assert_eq!(first["trigger"], "startup");
    assert!(first["from"].is_null());

    // The worker is told who it is and what it runs.
    let h = s.health().await.unwrap();
    assert_eq!(h["digest"], v1);
    let labels = docker(&["inspect", "-f", "{{json .Config.Labels}}", &s.name]);
    let labels: serde_json::Value = serde_json::from_str(labels.trim()).unwrap();
    assert_eq!(labels["gpu-agent.managed"], "true");
    assert_eq!(labels["gpu-agent.digest"], v1);

    let v2 = s.push("v2", "stable");
    s.wait_running(&v2, "v2", &agent).await;
    let e = s.wait_history(&v2, "success", &agent).await;
    assert_eq!(e["kind"], "update");
    assert_eq!(e["from"], v1);
    assert_eq!(e["trigger"], "poll");
    assert!(e["downtime_ms"].as_u64().is_some(), "{e}");
    assert!(e["error"].is_null());

    let st = s.state();
    assert_eq!(st["current_digest"], v2);
    assert_eq!(st["last_good_digest"], v2);
    assert!(st["pending"].is_null());
    // Only the new worker is left; the old container is gone after commit.
    let one = wait_for(WAIT, || async {
        (s.managed().await.len() == 1).then_some(())
    })
    .await;
    assert!(one.is_some(), "{:#?}", s.managed().await);
    // The image is deployed by digest, never by tag.
    let image = docker(&["inspect", "-f", "{{.Config.Image}}", &s.name]);
    assert_eq!(image.trim(), format!("{}@{v2}", s.image_repo()));
}

async fn rolls_back(variant: &str, name: &str, expect_error: &str) {
    let s = Setup::new(name);
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&s.config("tag = \"stable\"", &s.env(""), ""));
    s.wait_running(&v1, "v1", &agent).await;
    s.wait_history(&v1, "success", &agent).await;

    let bad = s.push(variant, "stable");
    let e = s.wait_history(&bad, "rolled_back", &agent).await;
    assert_eq!(e["from"], v1);
    // Downtime: the old worker stopped, the bad one failed, the old one answered again.
    assert!(e["downtime_ms"].as_u64().is_some_and(|ms| ms > 0), "{e}");
    let err = e["error"].as_str().unwrap();
    assert!(
        err.contains(expect_error),
        "error {err:?} lacks {expect_error:?}"
    );
    s.wait_running(&v1, "v1", &agent).await;
    let st = s.state();
    assert_eq!(st["current_digest"], v1);
    assert_eq!(st["last_good_digest"], v1);
    assert!(s.is_marked_bad(&bad), "{st}");
    // Several polls later the bad digest has not been tried again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let tries = s.history().iter().filter(|e| e["to"] == bad).count();
    assert_eq!(tries, 1, "the bad digest was retried: {:#?}", s.history());
    assert!(agent.log().contains("marked bad"), "{}", agent.log());
    s.wait_running(&v1, "v1", &agent).await;

    // When the tag moves on to a good digest, it is deployed.
    let v2 = s.push("v2", "stable");
    s.wait_running(&v2, "v2", &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_image_rolls_back_and_is_not_retried() {
    rolls_back("broken", "broken", "not healthy within").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_image_rolls_back_and_is_not_retried() {
    rolls_back("crash", "crash", "exited with code").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_healthcheck_gates_when_no_health_url_is_set() {
    let s = Setup::new("healthcheck");
    let good = s.push("hc-good", "stable");
    // No [worker.health] http: the image's HEALTHCHECK decides.
    let cfg = s
        .config("tag = \"stable\"", &s.env(""), "")
        .replace(&format!("http = \"{}\"\n", s.health_url()), "");
    let agent = s.start_agent(&cfg);
    s.wait_history(&good, "success", &agent).await;
    let bad = s.push("hc-bad", "stable");
    let e = s.wait_history(&bad, "rolled_back", &agent).await;
    assert!(e["error"].as_str().unwrap().contains("HEALTHCHECK"), "{e}");
    let c = s.running().await.unwrap();
    assert_eq!(c.digest.as_deref(), Some(good.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_in_flight_jobs() {
    let s = Setup::new("drain");
    let v1 = s.push("v1", "stable");
    let cfg = s.config(
        "tag = \"stable\"",
        &s.env("INFLIGHT_JOBS = \"3\", JOB_SECONDS = \"1\""),
        &s.drain_table("60s"),
    );
    let agent = s.start_agent(&cfg);
    s.wait_running(&v1, "v1", &agent).await;
    s.wait_history(&v1, "success", &agent).await;
    let v2 = s.push("v2", "stable");
    s.wait_running(&v2, "v2", &agent).await;

    let ev = s.events();
    let at = |version: &str, event: &str| {
        ev.iter()
            .find(|(_, v, e)| v == version && e == event)
            .map(|(t, _, _)| *t)
            .unwrap_or_else(|| panic!("no {version} {event} in events {ev:#?}"))
    };
    let drain = at("v1", "drain");
    let idle = at("v1", "idle");
    let term = at("v1", "sigterm");
    let start = at("v2", "start");
    assert!(
        idle >= drain + 2500,
        "three 1 s jobs took {} ms",
        idle - drain
    );
    assert!(
        term >= idle,
        "SIGTERM came before the jobs were done: {ev:#?}"
    );
    assert!(
        start >= term,
        "the new worker started before the old stopped: {ev:#?}"
    );
    assert!(agent.log().contains("waiting for in-flight jobs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_timeout_aborts_and_keeps_the_old_worker() {
    let s = Setup::new("drainabort");
    let v1 = s.push("v1", "stable");
    let cfg = s.config(
        "tag = \"stable\"",
        &s.env("INFLIGHT_JOBS = \"50\", JOB_SECONDS = \"100\""),
        &format!(
            "[worker.drain]\nhttp = \"{}\"\ntimeout = \"2s\"\non_timeout = \"abort\"\n",
            s.drain_url()
        ),
    );
    let agent = s.start_agent(&cfg);
    s.wait_running(&v1, "v1", &agent).await;
    s.wait_history(&v1, "success", &agent).await;
    let v2 = s.push("v2", "stable");
    let e = s.wait_history(&v2, "aborted", &agent).await;
    let err = e["error"].as_str().unwrap();
    assert!(err.contains("50 jobs still in flight"), "{err}");
    // The old worker still runs, was never stopped, and takes jobs again.
    let c = s.running().await.unwrap();
    assert_eq!(c.digest.as_deref(), Some(v1.as_str()));
    let ev = s.events();
    assert!(
        !ev.iter().any(|(_, v, e)| v == "v1" && e == "sigterm"),
        "{ev:#?}"
    );
    assert!(
        ev.iter().any(|(_, v, e)| v == "v1" && e == "undrain"),
        "{ev:#?}"
    );
    assert!(s.state()["pending"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semver_picks_the_highest_tag_in_range() {
    let s = Setup::new("semver");
    s.push("v1", "1.2.0");
    let want = s.push("v2", "v1.10");
    s.push("v3", "2.0.0");
    s.push("v1", "1.11.0-rc1");
    s.push("v1", "latest");
    let agent = s.start_agent(&s.config("version = \"^1.2\"", &s.env(""), ""));
    s.wait_running(&want, "v2", &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_auth_from_an_auth_file() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, cli) = htpasswd_registry(dir.path(), "fleet", "s3cret-pw");
    let s = Setup::with_registry("htpasswd", reg);
    let v1 = s.registry.push_env(
        &image("v1"),
        &s.repo,
        "stable",
        &[("DOCKER_CONFIG", cli.to_str().unwrap())],
    );
    let auth_file = s.dir.path().join("registry-auth.json");
    write_auth_file(&auth_file, &s.registry.host(), "fleet", "s3cret-pw", 0o600);
    // Without credentials: a clear error, nothing deployed.
    let agent = s.start_agent(&s.config("tag = \"stable\"", &s.env(""), ""));
    agent.wait_log("check failed").await;
    assert!(s.running().await.is_none());
    drop(agent);
    // With them, the registry resolves and the engine pulls (X-Registry-Auth).
    let cfg = s.config(
        &format!("tag = \"stable\"\nauth_file = \"{}\"", auth_file.display()),
        &s.env(""),
        "",
    );
    let agent = s.start_agent(&cfg);
    s.wait_running(&v1, "v1", &agent).await;
    assert!(
        !agent.log().contains("s3cret-pw"),
        "a secret reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_keeps_the_worker_and_recovers() {
    let mut s = Setup::new("regdown");
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&s.config("tag = \"stable\"", &s.env(""), ""));
    s.wait_running(&v1, "v1", &agent).await;
    let before = s.running().await.unwrap();
    s.registry.stop();
    agent.wait_log("check failed").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = s.running().await.expect("the worker keeps running");
    assert_eq!(during.id, before.id);
    s.registry.restart();
    let v2 = s.push("v2", "stable");
    s.wait_running(&v2, "v2", &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_that_does_not_exist_leaves_the_worker() {
    let s = Setup::new("notag");
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&s.config("tag = \"stable\"", &s.env(""), ""));
    s.wait_running(&v1, "v1", &agent).await;
    s.wait_history(&v1, "success", &agent).await;
    drop(agent);
    let agent = s.start_agent(&s.config("tag = \"nosuchtag\"", &s.env(""), ""));
    agent.wait_log("nosuchtag").await;
    agent.wait_log("check failed").await;
    let c = s.running().await.unwrap();
    assert_eq!(c.digest.as_deref(), Some(v1.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_agent_leaves_the_worker_and_a_restart_adopts_it() {
    let s = Setup::new("adopt");
    let v1 = s.push("v1", "stable");
    let cfg = s.config("tag = \"stable\"", &s.env(""), "");
    let mut agent = s.start_agent(&cfg);
    s.wait_running(&v1, "v1", &agent).await;
    s.wait_history(&v1, "success", &agent).await;
    let before = s.running().await.unwrap();
    assert_eq!(agent.terminate(), Some(0));
    let after = s.running().await.expect("the worker outlives the agent");
    assert_eq!(after.id, before.id);

    // State lost too: the agent adopts the running worker instead of replacing it.
    std::fs::remove_file(s.state_dir().join("state.json")).unwrap();
    let agent = s.start_agent(&cfg);
    agent.wait_log("adopting the running managed worker").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = s.running().await.unwrap();
    assert_eq!(again.id, before.id, "the worker was replaced");
    assert_eq!(s.state()["current_digest"], v1);
    let starts = s.events().iter().filter(|(_, _, e)| e == "start").count();
    assert_eq!(starts, 1, "the worker was restarted: {:#?}", s.events());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_started_again() {
    let s = Setup::new("restartworker");
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&s.config("tag = \"stable\"", &s.env(""), ""));
    s.wait_running(&v1, "v1", &agent).await;
    s.wait_history(&v1, "success", &agent).await;
    let before = s.running().await.unwrap();
    docker(&["stop", "-t", "1", &s.name]);
    s.wait_running(&v1, "v1", &agent).await;
    assert_eq!(
        s.running().await.unwrap().id,
        before.id,
        "the same container is started again"
    );
    assert!(
        agent.log().contains("starting the stopped worker"),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_is_refused_with_key_and_file() {
    let s = Setup::new("badconfig");
    let good = s.config("tag = \"stable\"", &s.env(""), "");
    let path = s.write_config(&good);
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_gpu-agent"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dropins = s.dir.path().join("agent.d");
    std::fs::create_dir(&dropins).unwrap();
    std::fs::write(
        dropins.join("50-typo.toml"),
        "[worker]\nstop_timout = \"5s\"\n",
    )
    .unwrap();
    for sub in ["check-config", "run"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpu-agent"))
            .args([sub, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{sub}: {err}");
        assert!(
            err.contains("50-typo.toml") && err.contains("stop_timout"),
            "{sub}: {err}"
        );
    }
    std::fs::remove_file(dropins.join("50-typo.toml")).unwrap();
    std::fs::write(dropins.join("60-range.toml"), "[image]\nversion = \"^2\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpu-agent"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("image.version") && err.contains("60-range.toml"),
        "{err}"
    );
    // Nothing was touched.
    assert!(s.managed().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpus_reach_the_engine_as_device_requests() {
    let s = Setup::new("gpus");
    let v1 = s.push("v1", "stable");
    let cfg = s.config("tag = \"stable\"", &s.env(""), "").replace(
        "gpus = \"all\"",
        "gpus = [\"GPU-aaa\", \"GPU-bbb\"]\nports = [\"127.0.0.1:19999:9999\"]\nshm_size = \"64m\"",
    );
    let agent = s.start_agent(&cfg);
    s.wait_running(&v1, "v1", &agent).await;
    let reqs = docker(&[
        "inspect",
        "-f",
        "{{json .HostConfig.DeviceRequests}}",
        &s.name,
    ]);
    let reqs: serde_json::Value = serde_json::from_str(reqs.trim()).unwrap();
    assert_eq!(
        reqs[0]["DeviceIDs"],
        serde_json::json!(["GPU-aaa", "GPU-bbb"]),
        "{reqs}"
    );
    assert_eq!(reqs[0]["Capabilities"], serde_json::json!([["gpu"]]));
    // The engine's nvidia driver handed the worker exactly those GPUs (in the
    // environment of its first process, where the driver puts them).
    let env = docker(&[
        "exec",
        &s.name,
        "sh",
        "-c",
        "tr '\\0' '\\n' < /proc/1/environ",
    ]);
    assert!(
        env.contains("NVIDIA_VISIBLE_DEVICES=GPU-aaa,GPU-bbb"),
        "{env}"
    );
    assert!(env.contains(&format!("GPU_AGENT_DIGEST={v1}")), "{env}");
    assert!(env.contains("GPU_AGENT_ID=test-gpus"), "{env}");
    let host = docker(&[
        "inspect",
        "-f",
        "{{json .HostConfig.PortBindings}} {{.HostConfig.ShmSize}}",
        &s.name,
    ]);
    assert!(
        host.contains("\"HostPort\":\"19999\"") && host.contains(&(64u64 << 20).to_string()),
        "{host}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_images_are_pruned_keeping_the_last_good_ones() {
    let s = Setup::new("prune");
    // v1 is pushed before the agent runs, so the push helper's `docker rmi` of
    // the tag cannot race the agent's pull of it.
    let mut digests = vec![s.push("v1", "stable")];
    let agent = s.start_agent(&s.config("tag = \"stable\"", &s.env(""), ""));
    s.wait_history(&digests[0], "success", &agent).await;
    for v in ["v2", "v3"] {
        let d = s.push(v, "stable");
        s.wait_history(&d, "success", &agent).await;
        digests.push(d);
    }
    // What the agent removed (the test's own `docker rmi` of pushed tags also
    // drops digest references, so the engine's listing alone would not tell).
    // Pruning follows the commit (and its history entry): wait for it.
    let v1_pruned = wait_for(WAIT, || async {
        agent
            .log()
            .lines()
            .any(|l| l.contains("pruned old worker image") && l.contains(&digests[0]))
            .then_some(())
    })
    .await;
    assert!(v1_pruned.is_some(), "v1 was not pruned:\n{}", agent.log());
    let pruned: Vec<String> = agent
        .log()
        .lines()
        .filter(|l| l.contains("pruned old worker image"))
        .map(String::from)
        .collect();
    for keep in &digests[1..] {
        assert!(
            !pruned.iter().any(|l| l.contains(keep.as_str())),
            "{keep} was pruned: {pruned:#?}"
        );
    }
    let gone = std::process::Command::new("docker")
        .env("DOCKER_HOST", docker_host())
        .args([
            "image",
            "inspect",
            &format!("{}@{}", s.image_repo(), digests[0]),
        ])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "v1 is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_registry_answer_leaves_the_worker_and_the_files() {
    use axum::routing::any;
    let s = Setup::new("garbage");
    let v1 = s.push("v1", "stable");
    let cfg = s.config("tag = \"stable\"", &s.env(""), "");
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    drop(agent);
    let before = s.running().await.unwrap();
    let state = std::fs::read(s.state_dir().join("state.json")).unwrap();
    let history = std::fs::read(s.state_dir().join("history.jsonl")).unwrap();

    // A "registry" that answers 200 with no digest and a body of junk.
    let app = axum::Router::new().fallback(any(|| async { "<html>not a registry</html>" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let agent = s.start_agent(&cfg.replace(&s.registry.host(), &format!("127.0.0.1:{port}")));
    agent.wait_log("check failed").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        agent.log().contains("digest"),
        "the error says what was wrong:\n{}",
        agent.log()
    );
    assert_eq!(s.running().await.unwrap().id, before.id);
    assert_eq!(
        std::fs::read(s.state_dir().join("state.json")).unwrap(),
        state
    );
    assert_eq!(
        std::fs::read(s.state_dir().join("history.jsonl")).unwrap(),
        history
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oci_index_is_deployed_by_its_own_digest() {
    let s = Setup::new("ociindex");
    // Push v1, then put an OCI image index over it under the followed tag.
    s.push("v1", "single");
    let base = format!("http://{}/v2/{}/manifests", s.registry.host(), s.repo);
    let http = reqwest::Client::new();
    let child = http
        .get(format!("{base}/single"))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    let child_type = child.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let child_digest = child.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    let child_len = child.bytes().await.unwrap().len();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": child_type, "digest": child_digest, "size": child_len,
            "platform": {"architecture": "amd64", "os": "linux"}
        }]
    });
    let put = http
        .put(format!("{base}/stable"))
        .header("Content-Type", "application/vnd.oci.image.index.v1+json")
        .body(serde_json::to_vec(&index).unwrap())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{:?}", put.text().await);
    let index_digest = put.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(index_digest, child_digest);

    let agent = s.start_agent(&s.config("tag = \"stable\"", &s.env(""), ""));
    // The worker runs and is labelled with the index digest, not the child's.
    s.wait_running(&index_digest, "v1", &agent).await;
    s.wait_history(&index_digest, "success", &agent).await;
    assert_eq!(s.health().await.unwrap()["digest"], index_digest);
}

/// Uploads `bytes` as a blob of `repo` (monolithic POST + PUT); returns its digest.
async fn upload_blob(http: &reqwest::Client, registry: &str, repo: &str, bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = format!(
        "sha256:{}",
        sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let start = http
        .post(format!("http://{registry}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let location = start.headers()["location"].to_str().unwrap().to_string();
    let mut url = url::Url::parse(&format!("http://{registry}"))
        .unwrap()
        .join(&location)
        .unwrap();
    url.query_pairs_mut().append_pair("digest", &digest);
    let put = http.put(url).body(bytes.to_vec()).send().await.unwrap();
    assert_eq!(put.status().as_u16(), 201);
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_that_will_not_pull_is_retried_then_marked_bad() {
    let s = Setup::new("nopull");
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&s.config("tag = \"stable\"", &s.env(""), ""));
    s.wait_history(&v1, "success", &agent).await;
    let before = s.running().await.unwrap();

    // An image whose layer the registry has lost: the manifest resolves, the pull fails.
    let http = reqwest::Client::new();
    let host = s.registry.host();
    let layer = upload_blob(
        &http,
        &host,
        &s.repo,
        format!("lost layer {}", s.port).as_bytes(),
    )
    .await;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer]}
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = upload_blob(&http, &host, &s.repo, &config_bytes).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": config_digest, "size": config_bytes.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": layer, "size": 10 + s.port.to_string().len()}]
    });
    let put = http
        .put(format!("http://{host}/v2/{}/manifests/stable", s.repo))
        .header(
            "Content-Type",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201, "{:?}", put.text().await);
    let lost = put.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    let del = http
        .delete(format!("http://{host}/v2/{}/blobs/{layer}", s.repo))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status().as_u16(), 202);

    // Three failed pulls, then the digest is marked bad; the worker was never touched.
    let marked = wait_for(WAIT, || async { s.is_marked_bad(&lost).then_some(()) }).await;
    assert!(marked.is_some(), "never marked bad:\n{}", agent.log());
    // The history line follows the state write that marks it.
    let failed = wait_for(WAIT, || async {
        let f: Vec<_> = s
            .history()
            .into_iter()
            .filter(|e| e["to"] == lost)
            .collect();
        (f.len() >= 3).then_some(f)
    })
    .await
    .expect("three failed pulls in the history");
    assert_eq!(failed.len(), 3, "{failed:#?}");
    assert!(failed.iter().all(|e| e["outcome"] == "failed"));
    assert!(
        failed[0]["error"].as_str().unwrap().contains("pulling"),
        "{failed:#?}"
    );
    assert_eq!(s.running().await.unwrap().id, before.id);
    assert_eq!(s.state()["current_digest"], v1);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        s.history().iter().filter(|e| e["to"] == lost).count(),
        3,
        "retried after the mark"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_with_the_worker_name_that_is_not_ours_is_left_alone() {
    let s = Setup::new("foreign");
    s.push("v1", "stable");
    // Someone runs a container under the worker's name by hand.
    let port = s.port.to_string();
    docker(&[
        "run",
        "-d",
        "--name",
        &s.name,
        "--network",
        "host",
        "-e",
        &format!("PORT={port}"),
        &image("v2"),
    ]);
    let before = docker(&["inspect", "-f", "{{.Id}} {{.State.StartedAt}}", &s.name]);
    let agent = s.start_agent(&s.config("tag = \"stable\"", &s.env(""), ""));
    agent.wait_log("this agent does not manage").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let after = docker(&["inspect", "-f", "{{.Id}} {{.State.StartedAt}}", &s.name]);
    assert_eq!(before, after, "the hand-run container was touched");
    assert!(s.managed().await.is_empty(), "{:#?}", s.managed().await);
    assert!(!s.events().iter().any(|(_, _, e)| e == "drain"));
    docker(&["rm", "-f", &s.name]);
    // Once the name is free, the agent deploys.
    agent.wait_log("new digest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_keeps_the_worker_and_the_bad_marks() {
    let s = Setup::new("corrupt");
    let v1 = s.push("v1", "stable");
    let cfg = s.config("tag = \"stable\"", &s.env(""), "");
    let mut agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let bad = s.push("broken", "stable");
    s.wait_history(&bad, "rolled_back", &agent).await;
    agent.kill9();
    let before = s.running().await.unwrap();
    std::fs::write(
        s.state_dir().join("state.json"),
        b"{\"current_digest\": \"sha256:tr",
    )
    .unwrap();

    let agent = s.start_agent(&cfg);
    agent.wait_log("state rebuilt from the history").await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let st = s.state();
    assert_eq!(st["last_good_digest"], v1, "{st}");
    assert_eq!(st["current_digest"], v1, "{st}");
    assert!(s.is_marked_bad(&bad), "{st}");
    assert_eq!(
        s.running().await.unwrap().id,
        before.id,
        "the worker was replaced"
    );
    assert_eq!(
        s.history().iter().filter(|e| e["to"] == bad).count(),
        1,
        "the bad digest was retried"
    );
    let kept = std::fs::read_dir(s.state_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        });
    assert!(kept, "the corrupt file was not kept aside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_ignores_sigterm_is_killed_after_stop_timeout() {
    let s = Setup::new("slowstop");
    let old = s.push("slowstop", "stable");
    let cfg = s
        .config("tag = \"stable\"", &s.env(""), "")
        .replace("stop_timeout = \"5s\"", "stop_timeout = \"2s\"");
    let agent = s.start_agent(&cfg);
    s.wait_history(&old, "success", &agent).await;
    let v2 = s.push("v2", "stable");
    s.wait_running(&v2, "v2", &agent).await;
    let e = s.wait_history(&v2, "success", &agent).await;
    // SIGTERM ignored, SIGKILL after 2 s: the downtime holds the whole stop_timeout.
    let downtime = e["downtime_ms"].as_u64().unwrap();
    assert!(downtime >= 2000, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_a_bad_one_is_refused() {
    let s = Setup::new("sighup");
    let v1 = s.push("v1", "stable");
    let v2 = s.push("v2", "canary");
    let cfg = s.config("tag = \"stable\"", &s.env(""), "");
    let mut agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let hup = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };

    // A bad config: refused, the agent keeps running on the old one.
    s.write_config(&format!("{cfg}\n[bogus]\nkey = 1\n"));
    hup(agent.pid());
    agent.wait_log("config reload refused").await;
    assert!(agent.log().contains("bogus"), "the error names the key");
    assert_eq!(agent.exited(), None, "the agent died on SIGHUP");

    // A good one: the new tag is followed from the next check.
    s.write_config(&cfg.replace("tag = \"stable\"", "tag = \"canary\""));
    hup(agent.pid());
    agent.wait_log("config reloaded").await;
    s.wait_running(&v2, "v2", &agent).await;
    assert_eq!(agent.exited(), None);
}
