use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn load(files: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let sources: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    load_from_strs(&sources)
}

fn err(files: &[(&str, &str)]) -> String {
    load(files)
        .expect_err("config should be refused")
        .to_string()
}

const MINIMAL: &str = r#"
[agent]
id = "host-1"
[image]
repository = "127.0.0.1:5055/acme/worker"
tag = "stable"
"#;

/// The example from the SPEC, verbatim apart from the commented-out line.
const SPEC_EXAMPLE: &str = r#"
[agent]
id = "gpu-host-17"
state_dir = "/var/lib/gpu-agent"
control_socket = "/run/gpu-agent/agent.sock"
metrics_listen = "127.0.0.1:9464"

[docker]
host = "unix:///var/run/docker.sock"

[image]
repository = "ghcr.io/acme/worker"
tag = "stable"
poll_interval = "5m"
poll_jitter = "30s"
auth_file = "/etc/gpu-agent/registry-auth.json"
insecure = false

[worker]
name = "gpu-worker"
command = ["python", "-m", "worker"]
env = { HUB_URL = "https://hub.example.com" }
volumes = ["/data/models:/models:ro"]
ports = ["127.0.0.1:8080:8080"]
network = "bridge"
shm_size = "16g"
restart = "unless-stopped"
gpus = "all"
stop_timeout = "30s"

[worker.health]
http = "http://127.0.0.1:8080/health"
timeout = "120s"
stable_for = "10s"

[worker.drain]
http = "http://127.0.0.1:8080/drain"
timeout = "30m"
on_timeout = "abort"

[gpu]
check = true
expected_count = 8
max_temperature_c = 90

[hub]
url = "https://hub.example.com"
token_file = "/etc/gpu-agent/hub-token"
desired_from_hub = true
verify_registration = true
registration_timeout = "60s"
"#;

#[test]
fn spec_example_loads() {
    let s = load(&[("/etc/gpu-agent/agent.toml", SPEC_EXAMPLE)]).unwrap();
    assert_eq!(s.agent.id, "gpu-host-17");
    assert_eq!(s.agent.metrics_listen.unwrap().port(), 9464);
    assert_eq!(s.image.name.to_string(), "ghcr.io/acme/worker");
    assert!(matches!(&s.image.policy, crate::registry::Policy::Tag(t) if t == "stable"));
    assert_eq!(s.image.poll_interval, Duration::from_secs(300));
    assert_eq!(s.worker.shm_size, Some(16 << 30));
    assert_eq!(s.worker.gpus, Gpus::All);
    assert_eq!(
        s.worker.ports,
        vec![PortMapping {
            host_ip: Some("127.0.0.1".into()),
            host_port: Some(8080),
            container_port: 8080,
            protocol: "tcp".into()
        }]
    );
    assert_eq!(s.worker.drain.timeout, Duration::from_secs(1800));
    assert_eq!(s.worker.drain.on_timeout, OnDrainTimeout::Abort);
    assert_eq!(s.gpu.expected_count, Some(8));
    let hub = s.hub.unwrap();
    assert!(hub.desired_from_hub && hub.verify_registration);
}

#[test]
fn defaults() {
    let s = load(&[("/a/agent.toml", MINIMAL)]).unwrap();
    assert_eq!(s.agent.state_dir, PathBuf::from("/var/lib/gpu-agent"));
    assert_eq!(
        s.agent.control_socket,
        PathBuf::from("/run/gpu-agent/agent.sock")
    );
    assert_eq!(s.worker.name, "gpu-worker");
    assert_eq!(s.worker.restart, "unless-stopped");
    assert_eq!(s.worker.stop_timeout, Duration::from_secs(30));
    assert_eq!(s.worker.health.timeout, Duration::from_secs(120));
    assert_eq!(s.worker.health.stable_for, Duration::from_secs(10));
    assert_eq!(s.image.poll_jitter, Duration::from_secs(30));
    assert!(s.gpu.check);
    assert!(s.gpu.drain_on_fault);
    assert_eq!(s.worker.gpus_via, GpusVia::Docker);
    assert_eq!(s.agent.stop_budget, Duration::from_secs(60));
    assert!(s.hub.is_none());
}

#[test]
fn gpus_forms() {
    let with = |g: &str| {
        load(&[("/a.toml", &format!("{MINIMAL}\n[worker]\ngpus = {g}\n"))])
            .map(|s| (s.worker.gpus, s.gpu.check))
    };
    assert_eq!(with("\"all\"").unwrap().0, Gpus::All);
    assert_eq!(with("\"none\"").unwrap(), (Gpus::None, false));
    assert_eq!(with("2").unwrap().0, Gpus::Count(2));
    assert_eq!(
        with("[\"GPU-a\", \"GPU-b\"]").unwrap().0,
        Gpus::Uuids(vec!["GPU-a".into(), "GPU-b".into()])
    );
    assert!(with("0").unwrap_err().to_string().contains("worker.gpus"));
    assert!(with("\"some\"")
        .unwrap_err()
        .to_string()
        .contains("worker.gpus"));
    assert!(with("[]").is_err());
    let via = |v: &str| {
        load(&[(
            "/a.toml",
            &format!("{MINIMAL}\n[worker]\ngpus_via = \"{v}\"\n"),
        )])
    };
    assert_eq!(via("cdi").unwrap().worker.gpus_via, GpusVia::Cdi);
    let e = via("nvidia").unwrap_err().to_string();
    assert!(e.contains("worker.gpus_via") && e.contains("cdi"), "{e}");
}

#[test]
fn dropins_override_keys_and_merge_tables() {
    let s = load(&[
        (
            "/a/agent.toml",
            &format!("{MINIMAL}\n[worker]\nenv = {{ A = \"1\", B = \"2\" }}\nports = [\"8080\"]\n"),
        ),
        (
            "/a/agent.d/10-x.toml",
            "[image]\ntag = \"canary\"\n[worker]\nenv = { B = \"3\" }\nports = [\"9090\"]\n",
        ),
    ])
    .unwrap();
    assert!(matches!(&s.image.policy, crate::registry::Policy::Tag(t) if t == "canary"));
    assert_eq!(s.worker.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(s.worker.env.get("B").map(String::as_str), Some("3"));
    assert_eq!(s.worker.ports.len(), 1);
    assert_eq!(s.worker.ports[0].container_port, 9090);
}

#[test]
fn unknown_key_names_key_and_file() {
    let e = err(&[
        ("/a/agent.toml", MINIMAL),
        (
            "/a/agent.d/20-typo.toml",
            "[worker]\nstop_timeot = \"5s\"\n",
        ),
    ]);
    assert!(e.contains("/a/agent.d/20-typo.toml"), "{e}");
    assert!(e.contains("stop_timeot"), "{e}");
    let e = err(&[(
        "/a/agent.toml",
        &format!("{MINIMAL}\n[wrker]\nname = \"x\"\n"),
    )]);
    assert!(e.contains("wrker") && e.contains("/a/agent.toml"), "{e}");
}

#[test]
fn wrong_types_and_values_name_the_file() {
    let e = err(&[(
        "/a/agent.toml",
        &format!("{MINIMAL}\n[worker]\nstop_timeout = 30\n"),
    )]);
    assert!(
        e.contains("/a/agent.toml") && e.contains("stop_timeout"),
        "{e}"
    );
    let e = err(&[(
        "/a/agent.toml",
        &format!("{MINIMAL}\n[worker]\nstop_timeout = \"30\"\n"),
    )]);
    assert!(e.contains("no unit"), "{e}");
    let e = err(&[("/a/agent.toml", "[image\nrepository = 1")]);
    assert!(e.contains("/a/agent.toml"), "{e}");
}

#[test]
fn validation_errors_name_key_and_the_file_that_set_it() {
    let e = err(&[
        ("/a/agent.toml", MINIMAL),
        ("/a/agent.d/50-v.toml", "[image]\nversion = \"^2\"\n"),
    ]);
    assert!(
        e.contains("image.version") && e.contains("/a/agent.d/50-v.toml"),
        "{e}"
    );
    assert!(e.contains("exclude each other"), "{e}");

    let e = err(&[(
        "/a/agent.toml",
        &format!("{MINIMAL}\n[worker.drain]\non_timeout = \"wait\"\n"),
    )]);
    assert!(e.contains("worker.drain.on_timeout"), "{e}");
    let e = err(&[(
        "/a/agent.toml",
        &format!("{MINIMAL}\n[worker]\nports = [\"x:80\"]\n"),
    )]);
    assert!(e.contains("worker.ports"), "{e}");
    let e = err(&[(
        "/a/agent.toml",
        &format!("{MINIMAL}\n[worker]\nenv = {{ GPU_AGENT_DIGEST = \"x\" }}\n"),
    )]);
    assert!(e.contains("worker.env.GPU_AGENT_DIGEST"), "{e}");
    let e = err(&[(
        "/a/agent.toml",
        &format!("{MINIMAL}\n[worker.health]\nhttp = \"ftp://x/\"\n"),
    )]);
    assert!(e.contains("worker.health.http"), "{e}");
    let e = err(&[("/a/agent.toml", "[agent]\nid = \"h\"\n")]);
    assert!(e.contains("image.repository"), "{e}");
    let e = err(&[(
        "/a/agent.toml",
        "[agent]\nid = \"h\"\n[image]\nrepository = \"Bad Name\"\n",
    )]);
    assert!(e.contains("image.repository"), "{e}");
    let e = err(&[(
        "/a/agent.toml",
        "[agent]\nid = \"h\"\n[image]\nrepository = \"r/x\"\nversion = \"not a range\"\n",
    )]);
    assert!(e.contains("image.version"), "{e}");
    let e = err(&[(
        "/a/agent.toml",
        &format!("{MINIMAL}\n[worker]\nrestart = \"sometimes\"\n"),
    )]);
    assert!(e.contains("worker.restart"), "{e}");
}

#[test]
fn ports() {
    let p = parse_port("8080").unwrap();
    assert_eq!((p.host_port, p.container_port), (None, 8080));
    let p = parse_port("9000:80/udp").unwrap();
    assert_eq!(
        (p.host_port, p.container_port, p.protocol.as_str()),
        (Some(9000), 80, "udp")
    );
    let p = parse_port("[::1]:8080:80").unwrap();
    assert_eq!(p.host_ip.as_deref(), Some("::1"));
    let p = parse_port("127.0.0.1::80").unwrap();
    assert_eq!(
        (p.host_ip.as_deref(), p.host_port),
        (Some("127.0.0.1"), None)
    );
    assert!(parse_port("1:2:3:4").is_err());
    assert!(parse_port("80/sctp").is_err());
    assert!(parse_port("999999").is_err());
    assert!(parse_port("300.1.1.1:80:80").is_err());
}

#[test]
fn dropin_files_are_found_in_lexical_order() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("agent.toml");
    std::fs::write(&main, MINIMAL).unwrap();
    std::fs::create_dir(dir.path().join("agent.d")).unwrap();
    std::fs::write(
        dir.path().join("agent.d/20-b.toml"),
        "[image]\ntag = \"b\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("agent.d/10-a.toml"),
        "[image]\ntag = \"a\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("agent.d/README"), "not toml").unwrap();
    let files = config_files(&main).unwrap();
    assert_eq!(files.len(), 3);
    assert!(files[1].ends_with("10-a.toml") && files[2].ends_with("20-b.toml"));
    let s = super::load(&main).unwrap();
    assert!(matches!(&s.image.policy, crate::registry::Policy::Tag(t) if t == "b"));
    let e = super::load(&dir.path().join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.toml"), "{e}");
}

/// The commented example installed as /etc/gpu-agent/agent.toml by the .deb.
const PACKAGED_EXAMPLE: &str = include_str!("../../../packaging/agent.toml");

/// The packaged example with its one required line uncommented.
fn packaged_with_repository() -> String {
    let line = "# repository = \"ghcr.io/acme/worker\"";
    assert_eq!(
        PACKAGED_EXAMPLE.matches(line).count(),
        1,
        "packaging/agent.toml should hold `{line}` once"
    );
    PACKAGED_EXAMPLE.replacen(line, "repository = \"ghcr.io/acme/worker\"", 1)
}

/// `(section, key, value)` for every `key = value` line of the packaged
/// example, commented out or not; the section is the last `[header]` above it,
/// commented out or not.
fn packaged_keys() -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in PACKAGED_EXAMPLE.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            // `[[notify]]`, an array of tables, is section `notify`.
            section = name.trim_matches(['[', ']']).to_string();
        } else if let Some((key, value)) = line.split_once(" = ") {
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.push((section.clone(), key.to_string(), value.to_string()));
            }
        }
    }
    keys
}

#[test]
fn packaged_example_asks_for_the_repository_and_nothing_else() {
    // As installed, every key is commented out: the agent refuses to start
    // (exit 78) until image.repository is set, and says so.
    let e = err(&[("/etc/gpu-agent/agent.toml", PACKAGED_EXAMPLE)]);
    assert!(e.contains("`image.repository` is required"), "{e}");

    // Uncommenting that one line is enough, and everything else is the default.
    let text = packaged_with_repository();
    let s = load(&[("/etc/gpu-agent/agent.toml", &text)]).unwrap();
    assert_eq!(s.image.name.to_string(), "ghcr.io/acme/worker");
    assert!(matches!(&s.image.policy, crate::registry::Policy::Tag(t) if t == "latest"));
    assert_eq!(s.image.poll_interval, Duration::from_secs(300));
    assert_eq!(s.agent.state_dir, PathBuf::from("/var/lib/gpu-agent"));
    assert_eq!(
        s.agent.control_socket,
        PathBuf::from(DEFAULT_CONTROL_SOCKET)
    );
    assert_eq!(s.agent.metrics_listen, None);
    assert_eq!(s.agent.stop_budget, Duration::from_secs(60));
    assert_eq!(s.worker.name, "gpu-worker");
    assert_eq!(s.worker.gpus, Gpus::All);
    assert_eq!(s.worker.stop_timeout, Duration::from_secs(30));
    assert!(s.worker.drain.http.is_none());
    assert!(s.gpu.check && s.gpu.drain_on_fault);
    assert!(s.hub.is_none());
}

#[test]
fn packaged_example_values_are_valid_one_by_one() {
    for (section, key, value) in packaged_keys() {
        // What each key needs beside it to load: the repository, and a hub url.
        let mut text = String::from("[image]\nrepository = \"ghcr.io/acme/worker\"\n");
        match (section.as_str(), key.as_str()) {
            // The example names a file on the host; the file's checks are
            // tested in tests/tls.rs.
            ("agent", "ca_file") => continue,
            // Likewise a key file: tested below and in tests/trust.rs.
            ("image.verify", "cosign_public_keys") => continue,
            ("image", "repository") => {}
            ("image", _) => text.push_str(&format!("{key} = {value}\n")),
            // Files on the host (and a user needs its password file): tested
            // in fleet/config_tests.rs.
            ("fleet", "ca_file" | "cert_file" | "key_file" | "username" | "password_file") => {
                continue
            }
            ("fleet", k) if k != "etcd" => text.push_str(&format!(
                "[fleet]\netcd = [\"https://etcd-1:2379\"]\n{key} = {value}\n"
            )),
            ("hub", k) if k != "url" => text.push_str(&format!(
                "[hub]\nurl = \"https://hub.example.com\"\n{key} = {value}\n"
            )),
            ("notify", "url") => text.push_str(&format!("[[notify]]\nurl = {value}\n")),
            ("notify", _) => text.push_str(&format!(
                "[[notify]]\nurl = \"https://hooks.example.com/x\"\n{key} = {value}\n"
            )),
            _ => text.push_str(&format!("[{section}]\n{key} = {value}\n")),
        }
        if let Err(e) = load(&[("/etc/gpu-agent/agent.toml", &text)]) {
            panic!("packaging/agent.toml: `{section}.{key} = {value}` does not load: {e}");
        }
    }
}

#[test]
fn packaged_example_shows_every_key() {
    // The tables of fragments.rs and where they sit in the file.
    let tables = [
        ("Fragment", ""),
        ("AgentFragment", "agent"),
        ("DockerFragment", "docker"),
        ("ImageFragment", "image"),
        ("VerifyFragment", "image.verify"),
        ("WorkerFragment", "worker"),
        ("HealthFragment", "worker.health"),
        ("DrainFragment", "worker.drain"),
        ("GpuFragment", "gpu"),
        ("HubFragment", "hub"),
        ("NotifyFragment", "notify"),
        ("FleetFragment", "fleet"),
    ];
    let shown = packaged_keys();
    let headers: Vec<String> = PACKAGED_EXAMPLE
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.strip_prefix('[').and_then(|l| l.strip_suffix(']')))
        .map(|l| l.trim_matches(['[', ']']).to_string())
        .collect();
    let mut table = None;
    let mut checked = 0;
    for line in include_str!("fragments.rs").lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("pub struct ") {
            let name = rest.trim_end_matches(" {").trim();
            let found = tables.iter().find(|(t, _)| *t == name);
            table = Some(found.unwrap_or_else(|| {
                panic!("fragments.rs has a new table {name}: add it to this test and to packaging/agent.toml")
            }).1);
            continue;
        }
        if line == "}" {
            table = None;
            continue;
        }
        let (Some(section), Some(field)) = (table, line.strip_prefix("pub ")) else {
            continue;
        };
        let Some((key, ty)) = field.split_once(": Option<") else {
            continue;
        };
        let ty = ty.trim_end_matches(">,");
        let ty = ty.strip_prefix("Vec<").unwrap_or(ty).trim_end_matches('>');
        let nested = tables.iter().any(|(t, _)| *t == ty);
        let dotted = if section.is_empty() {
            key.to_string()
        } else {
            format!("{section}.{key}")
        };
        if nested {
            assert!(
                headers.contains(&dotted),
                "packaging/agent.toml has no [{dotted}] table"
            );
        } else {
            assert!(
                shown.iter().any(|(s, k, _)| s == section && k == key),
                "packaging/agent.toml does not show `{dotted}`"
            );
        }
        checked += 1;
    }
    // Every field was seen (a change of layout in fragments.rs fails here, not silently).
    assert!(
        checked >= 40,
        "only {checked} fields of fragments.rs were read"
    );
}

#[test]
fn cosign_keys_are_read_when_the_config_loads_and_errors_name_key_and_file() {
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cosign.pub");
    let pem = p256::ecdsa::SigningKey::from_slice(&[5; 32])
        .unwrap()
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(&key, pem).unwrap();
    let with = |verify: &str| format!("{MINIMAL}[image.verify]\n{verify}\n");
    let s = load(&[(
        "/etc/a.toml",
        &with(&format!(
            "cosign_public_keys = [\"{}\"]\nmin_age = \"2h\"",
            key.display()
        )),
    )])
    .unwrap();
    let v = s.image.verify.unwrap();
    assert_eq!(v.min_age, Some(Duration::from_secs(7200)));
    let keys: Vec<_> = v.cosign_keys.unwrap().paths().map(PathBuf::from).collect();
    assert_eq!(keys, vec![key.clone()]);

    let junk = dir.path().join("junk.pub");
    std::fs::write(&junk, "hello").unwrap();
    let e = err(&[(
        "/etc/a.toml",
        &with(&format!(
            "cosign_public_keys = [\"{}\", \"{}\"]",
            key.display(),
            junk.display()
        )),
    )]);
    assert!(
        e.contains("image.verify.cosign_public_keys")
            && e.contains("/etc/a.toml")
            && e.contains("junk.pub")
            && e.contains("is not a cosign public key"),
        "{e}"
    );
    let e = err(&[(
        "/etc/a.toml",
        &with("cosign_public_keys = [\"/nowhere/k.pub\"]"),
    )]);
    assert!(
        e.contains("cannot read") && e.contains("/nowhere/k.pub"),
        "{e}"
    );
    let e = err(&[("/etc/a.toml", &with("cosign_public_keys = [\"k.pub\"]"))]);
    assert!(e.contains("absolute"), "{e}");
    let e = err(&[("/etc/a.toml", &with("cosign_public_keys = []"))]);
    assert!(e.contains("no cosign public key given"), "{e}");
    let e = err(&[("/etc/a.toml", &with(""))]);
    assert!(e.contains("image.verify") && e.contains("is empty"), "{e}");
    // min_age alone is allowed, and check-config says signatures are not checked.
    let s = load(&[("/etc/a.toml", &with("min_age = \"30m\""))]).unwrap();
    assert!(s
        .security_notes()
        .iter()
        .any(|n| n.contains("image signatures are not checked")));
}

#[test]
fn plain_http_is_refused_unless_loopback_or_insecure() {
    for ok in [
        "https://hub.example.com",
        "http://127.0.0.1:8080",
        "http://127.9.9.9",
        "http://[::1]:80/",
        "http://localhost:1",
        "http://LOCALHOST",
    ] {
        assert!(check_plain_http(ok, false).is_ok(), "{ok}");
    }
    for bad in [
        "http://hub.example.com",
        "http://10.0.0.1:80",
        "http://[fe80::1]",
        "http://127.0.0.1.nip.io",
    ] {
        let e = check_plain_http(bad, false).unwrap_err();
        assert!(
            e.contains("plain http") && e.contains("insecure = true"),
            "{bad}: {e}"
        );
        assert!(check_plain_http(bad, true).is_ok(), "{bad}");
    }
    assert!(check_plain_http("ftp://x", true).is_err());

    let hub =
        |extra: &str| format!("{MINIMAL}[hub]\nurl = \"http://hub.example.com:8080\"\n{extra}\n");
    let e = err(&[("/etc/a.toml", &hub(""))]);
    assert!(
        e.contains("hub.url") && e.contains("/etc/a.toml") && e.contains("plain http"),
        "{e}"
    );
    let s = load(&[("/etc/a.toml", &hub("insecure = true"))]).unwrap();
    assert!(s.hub.as_ref().unwrap().insecure);
    assert!(
        s.security_notes()
            .iter()
            .any(|n| n.contains("hub http://hub.example.com:8080/ is used over plain http")),
        "{:?}",
        s.security_notes()
    );
    // The registry: plain http only with image.insecure, and check-config says so.
    let s = load(&[(
        "/etc/a.toml",
        &MINIMAL
            .replace("127.0.0.1:5055", "registry.example.com")
            .replace("tag = \"stable\"", "tag = \"stable\"\ninsecure = true"),
    )])
    .unwrap();
    assert!(s
        .security_notes()
        .iter()
        .any(|n| n.contains("registry http://registry.example.com/v2/ is used over plain http")));
    // A loopback registry over http is not worth a note.
    let s = load(&[(
        "/etc/a.toml",
        &MINIMAL.replace("tag = \"stable\"", "tag = \"stable\"\ninsecure = true"),
    )])
    .unwrap();
    assert!(!s.security_notes().iter().any(|n| n.contains("plain http")));
}

#[test]
fn history_max_and_pull_timeout() {
    let s = load(&[("/a/agent.toml", MINIMAL)]).unwrap();
    assert_eq!(s.agent.history_max, 16 << 20);
    assert_eq!(s.image.pull_timeout, Duration::from_secs(30 * 60));
    let set = MINIMAL
        .replace("id = \"host-1\"", "id = \"host-1\"\nhistory_max = \"1m\"")
        .replace(
            "tag = \"stable\"",
            "tag = \"stable\"\npull_timeout = \"90s\"",
        );
    let s = load(&[("/a/agent.toml", &set)]).unwrap();
    assert_eq!(s.agent.history_max, 1 << 20);
    assert_eq!(s.image.pull_timeout, Duration::from_secs(90));
    let e = err(&[(
        "/a/agent.toml",
        &MINIMAL.replace("id = \"host-1\"", "id = \"host-1\"\nhistory_max = \"1k\""),
    )]);
    assert!(e.contains("agent.history_max") && e.contains("64k"), "{e}");
    let e = err(&[(
        "/a/agent.toml",
        &MINIMAL.replace(
            "tag = \"stable\"",
            "tag = \"stable\"\npull_timeout = \"0s\"",
        ),
    )]);
    assert!(
        e.contains("image.pull_timeout") && e.contains("at least 1s"),
        "{e}"
    );
}
