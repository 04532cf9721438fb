//! The security pass (docs/reliability.md): the control socket's mode and
//! group, secrets kept out of every output, a loose token file warned
//! about, and TLS through rustls only.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::*;
use hub_client::mock::MockHub;

const PASSWORD: &str = "pw-7c41-do-not-leak";
const TOKEN: &str = "hub-token-9d2e-do-not-leak";

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The gid of group `gpu-agent`, where the host has one.
fn gpu_agent_gid() -> Option<u32> {
    let out = Command::new("getent")
        .args(["group", "gpu-agent"])
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    line.split(':').nth(2)?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_is_0660_and_group_gpu_agent_where_it_exists() {
    let s = Setup::new("sec-sock");
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&s.config("tag = \"stable\"", &s.env(""), ""));
    s.wait_history(&v1, "success", &agent).await;
    let meta = std::fs::metadata(socket(&s)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket mode");
    match gpu_agent_gid() {
        Some(gid) => assert_eq!(meta.gid(), gid, "socket group"),
        // Without the group, the socket keeps the agent's own group (root
        // only, for an agent run as root), never a wider one.
        None => assert_eq!(
            meta.gid(),
            std::fs::metadata(s.state_dir()).unwrap().gid(),
            "socket group"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_and_the_hub_token_never_reach_any_output() {
    // A registry behind htpasswd, with the password only in the auth file.
    let dir = tempfile::tempdir().unwrap();
    let (reg, cli) = htpasswd_registry(dir.path(), "fleet", PASSWORD);
    let s = Setup::with_registry("sec-secrets", reg);
    let cli_env = [("DOCKER_CONFIG", cli.to_str().unwrap())];
    let push = |variant: &str| {
        s.registry
            .push_env(&image(variant), &s.repo, "stable", &cli_env)
    };
    let v1 = push("v1");
    let basic = base64_encode(&format!("fleet:{PASSWORD}"));
    let auth_file = s.dir.path().join("registry-auth.json");
    write_auth_file(&auth_file, &s.registry.host(), "fleet", PASSWORD, 0o600);

    let hub = MockHub::start(Some(TOKEN.into())).await.unwrap();
    let token = s.dir.path().join("hub-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = s.config(
        &format!("tag = \"stable\"\nauth_file = \"{}\"", auth_file.display()),
        &s.env(&format!("HUB_URL = \"{}\"", hub.url())),
        &format!(
            "[hub]\nurl = \"{}\"\ntoken_file = \"{}\"\n",
            hub.url(),
            token.display()
        ),
    );
    let agent = s.start_agent(&cfg);
    s.wait_running(&v1, "v1", &agent).await;
    let v2 = push("v2");
    s.wait_running(&v2, "v2", &agent).await;
    s.wait_history(&v2, "success", &agent).await;
    // A failure too: the registry refuses a wrong password (errors are where
    // secrets leak most easily).
    write_auth_file(
        &auth_file,
        &s.registry.host(),
        "fleet",
        &format!("{PASSWORD}-wrong"),
        0o600,
    );
    push("v3");
    agent.wait_log("check failed").await;

    let mut outputs = vec![
        ("agent log".to_string(), agent.log()),
        (
            "state.json".into(),
            std::fs::read_to_string(s.state_dir().join("state.json")).unwrap(),
        ),
        (
            "history.jsonl".into(),
            std::fs::read_to_string(s.state_dir().join("history.jsonl")).unwrap(),
        ),
    ];
    for args in [
        &["status", "--json"][..],
        &["status"],
        &["history", "--json"],
        &["history"],
        &["health", "--json"],
        &["health"],
    ] {
        let r = ctl(&s, args).await;
        outputs.push((
            format!("agentctl {args:?}"),
            format!("{}{}", r.stdout, r.stderr),
        ));
    }
    let reports = hub.reports(&s.agent_id);
    assert!(!reports.is_empty(), "the hub got no reports");
    outputs.push((
        "hub reports".into(),
        serde_json::to_string(&reports).unwrap(),
    ));
    for (what, text) in &outputs {
        for secret in [PASSWORD, TOKEN, basic.as_str()] {
            assert!(
                !text.contains(secret),
                "{what} contains a secret ({secret}):\n{text}"
            );
        }
    }
    // The files did get read: the log names the auth file, not its content.
    assert!(s.history().iter().any(|e| e["to"] == v2.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_token_file_readable_by_all_is_warned_about() {
    let s = Setup::new("sec-loose");
    let hub = MockHub::start(Some(TOKEN.into())).await.unwrap();
    let token = s.dir.path().join("hub-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&s.config(
        "tag = \"stable\"",
        &s.env(""),
        &format!(
            "[hub]\nurl = \"{}\"\ntoken_file = \"{}\"\n",
            hub.url(),
            token.display()
        ),
    ));
    s.wait_history(&v1, "success", &agent).await;
    agent.wait_log("readable by every user").await;
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("readable by every user"))
        .unwrap();
    assert!(line.contains("644"), "the warning gives the mode: {line}");
    assert!(!log.contains(TOKEN), "the token was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_auth_file_readable_by_all_is_warned_about() {
    let s = Setup::new("sec-loose-auth");
    let auth_file = s.dir.path().join("registry-auth.json");
    write_auth_file(&auth_file, &s.registry.host(), "fleet", PASSWORD, 0o644);
    let v1 = s.push("v1", "stable");
    let agent = s.start_agent(&s.config(
        &format!("tag = \"stable\"\nauth_file = \"{}\"", auth_file.display()),
        &s.env(""),
        "",
    ));
    s.wait_history(&v1, "success", &agent).await;
    agent.wait_log("registry auth file").await;
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("readable by every user"))
        .expect("a warning about the auth file's mode");
    assert!(
        line.contains("644") && line.contains("registry-auth.json"),
        "{line}"
    );
    assert_eq!(
        log.matches("the registry auth file").count(),
        1,
        "warned once, not at every poll"
    );
    assert!(!log.contains(PASSWORD));
}

#[test]
fn tls_is_rustls_only_no_openssl_or_native_tls_in_the_normal_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "-p",
            "gpu-agent",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("rustls"), "no rustls in the tree:\n{tree}");
    for bad in ["openssl", "native-tls", "openssl-sys"] {
        let hit: Vec<&str> = tree
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(bad))
            .collect();
        assert!(hit.is_empty(), "{bad} is a dependency: {hit:?}");
    }
}
