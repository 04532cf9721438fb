//! The operator's first hour with the binaries, no engine needed: output into
//! a closed pipe, the man pages, `--json` errors, `check-config`'s checks of
//! the host and `gpu-agent version`'s commit.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const AGENTCTL: &str = env!("CARGO_BIN_EXE_agentctl");
const GPU_AGENT: &str = env!("CARGO_BIN_EXE_gpu-agent");
const GPU_FLEET: &str = env!("CARGO_BIN_EXE_gpu-fleet");

/// Runs `bin args` with stdout a socket whose other end is already closed:
/// every write fails with EPIPE, as into `| head -1` once head has exited.
fn into_closed_pipe(bin: &str, args: &[&str]) -> Output {
    let (ours, theirs) = UnixStream::pair().unwrap();
    drop(ours);
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn minimal_config(dir: &Path, extra: &str) -> String {
    let p = dir.join("agent.toml");
    std::fs::write(
        &p,
        format!(
            "[agent]\nid = \"host-1\"\nstate_dir = \"{}\"\n[image]\nrepository = \"127.0.0.1:5000/acme/worker\"\ntag = \"stable\"\n{extra}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = minimal_config(dir.path(), "");
    let man = dir.path().join("man");
    let man = man.to_str().unwrap();
    for (bin, args) in [
        (AGENTCTL, &["completions", "bash"][..]),
        (AGENTCTL, &["completions", "zsh"]),
        (AGENTCTL, &["--help"]),
        (AGENTCTL, &["man", "--out", man]),
        (GPU_AGENT, &["check-config", "--config", &cfg]),
        (GPU_AGENT, &["version"]),
        (GPU_AGENT, &["--version"]),
        (GPU_AGENT, &["man", "--out", man]),
    ] {
        let out = into_closed_pipe(bin, args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{bin} {args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{bin} {args:?}: {}",
            text(&out.stderr)
        );
    }
    // A refused config keeps its exit status, pipe or not.
    let bad = minimal_config(dir.path(), "[worker]\nname = \"/bad\"\n");
    let out = into_closed_pipe(GPU_AGENT, &["check-config", "--config", &bad]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
}

/// The lines of a man page's section `name` (roff source).
fn section(page: &str, name: &str) -> String {
    let start = page
        .find(&format!(".SH {name}"))
        .unwrap_or_else(|| panic!("no {name} in\n{page}"));
    let rest = &page[start + 4..];
    rest[..rest.find("\n.SH ").unwrap_or(rest.len())].to_string()
}

#[test]
fn man_pages_show_the_command_as_typed_and_point_only_to_pages_that_exist() {
    let dir = tempfile::tempdir().unwrap();
    for bin in [AGENTCTL, GPU_AGENT] {
        let out = run(bin, &["man", "--out", dir.path().to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(pages.iter().any(|p| p == "agentctl-drain.1"), "{pages:?}");
    let drain = std::fs::read_to_string(dir.path().join("agentctl-drain.1")).unwrap();
    let synopsis = section(&drain, "SYNOPSIS");
    assert!(synopsis.contains("agentctl drain"), "{synopsis}");
    assert!(!synopsis.contains("agentctl\\-drain"), "{synopsis}");
    // NAME is the page's own name, as man finds it.
    assert!(
        section(&drain, "NAME").contains("agentctl\\-drain"),
        "{drain}"
    );
    // Every page another page points to exists.
    for p in &pages {
        let body = std::fs::read_to_string(dir.path().join(p)).unwrap();
        for (i, _) in body.match_indices("(1)") {
            let start = body[..i]
                .rfind(|c: char| c.is_whitespace())
                .map_or(0, |s| s + 1);
            let target = body[start..i].replace("\\-", "-");
            assert!(
                pages.contains(&format!("{target}.1")),
                "{p} points to {target}(1), which is not among {pages:?}"
            );
        }
    }
    assert!(!pages.iter().any(|p| p.contains("-help")), "{pages:?}");
}

#[test]
fn json_errors_are_json_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let out = run(
        AGENTCTL,
        &["--json", "--socket", missing.to_str().unwrap(), "status"],
    );
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {:?}", text(&out.stdout)));
    assert_eq!(v["exit_code"], 3);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("cannot reach gpu-agent at "),
        "{v}"
    );
    // The text still goes to stderr for whoever watches.
    assert!(text(&out.stderr).starts_with("agentctl: cannot reach"));

    for args in [
        &["--json", "frobnicate"][..],
        &["status", "--frob", "--json"],
    ] {
        let out = run(AGENTCTL, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {:?}", text(&out.stdout)));
        assert_eq!(v["exit_code"], 2, "{args:?}");
        assert!(!v["error"].as_str().unwrap().is_empty(), "{v}");
    }
    // Without --json nothing changes: stdout stays empty.
    let out = run(AGENTCTL, &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

#[test]
fn check_config_refuses_what_the_host_cannot_give() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("hub-token");
    let cfg = minimal_config(
        dir.path(),
        &format!(
            "[hub]\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    let out = run(GPU_AGENT, &["check-config", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(78));
    let err = text(&out.stderr);
    assert!(err.contains("hub.token_file"), "{err}");
    assert!(
        err.contains(&format!("{} does not exist", token.display())),
        "{err}"
    );
    std::fs::write(&token, "t0k3n\n").unwrap();
    let out = run(GPU_AGENT, &["check-config", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("config ok"));

    // A metrics address another program holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let path = minimal_config(dir.path(), "");
    let cfg = std::fs::read_to_string(&path).unwrap().replace(
        "[agent]\n",
        &format!("[agent]\nmetrics_listen = \"{addr}\"\n"),
    );
    std::fs::write(&path, &cfg).unwrap();
    let out = run(GPU_AGENT, &["check-config", "--config", &path]);
    assert_eq!(out.status.code(), Some(78));
    let err = text(&out.stderr);
    assert!(err.contains("agent.metrics_listen"), "{err}");
    assert!(err.contains(&format!("{addr} is in use")), "{err}");
    // What the unit's reload runs: the config files alone.
    let out = run(
        GPU_AGENT,
        &["check-config", "--no-host-checks", "--config", &path],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    drop(taken);
    let out = run(GPU_AGENT, &["check-config", "--config", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn version_names_the_commit() {
    let out = run(GPU_AGENT, &["version"]);
    assert!(out.status.success());
    let line = text(&out.stdout);
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_string(),
            |o| text(&o.stdout).trim().to_string(),
        );
    assert_eq!(
        line.trim(),
        format!("gpu-agent {} (commit {head})", env!("CARGO_PKG_VERSION"))
    );
}

/// The man pages and completions the package ships are committed (so that
/// `cargo deb -p gpu-agent` alone packs them): they must be what the
/// binaries write now.
#[test]
fn the_committed_man_pages_and_completions_match_the_binaries() {
    let packaging = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    for bin in [GPU_AGENT, AGENTCTL, GPU_FLEET] {
        let out = run(bin, &["man", "--out", man.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let fix = "run scripts/gen-docs.sh and commit packaging/man and packaging/completions";
    assert_eq!(names(&man), names(&packaging.join("man")), "{fix}");
    for n in names(&man) {
        assert!(
            std::fs::read(man.join(&n)).unwrap()
                == std::fs::read(packaging.join("man").join(&n)).unwrap(),
            "packaging/man/{n} is stale: {fix}"
        );
    }
    for (bin, shell, file) in [
        (AGENTCTL, "bash", "agentctl.bash"),
        (AGENTCTL, "zsh", "_agentctl"),
        (AGENTCTL, "fish", "agentctl.fish"),
        (GPU_FLEET, "bash", "gpu-fleet.bash"),
        (GPU_FLEET, "zsh", "_gpu-fleet"),
        (GPU_FLEET, "fish", "gpu-fleet.fish"),
    ] {
        let out = run(bin, &["completions", shell]);
        assert!(out.status.success());
        assert!(
            out.stdout == std::fs::read(packaging.join("completions").join(file)).unwrap(),
            "packaging/completions/{file} is stale: {fix}"
        );
    }
}
