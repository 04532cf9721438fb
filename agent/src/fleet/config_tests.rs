//! `[fleet]` in the agent's config: defaults and errors that name the key and file.

use std::path::PathBuf;

use crate::config::{load_from_strs, ConfigError, Settings};

const BASE: &str = r#"
[agent]
id = "host-1"
[image]
repository = "127.0.0.1:5055/acme/worker"
"#;

fn load(fleet: &str) -> Result<Settings, ConfigError> {
    load_from_strs(&[
        (PathBuf::from("/etc/gpu-agent/agent.toml"), BASE.to_string()),
        (
            PathBuf::from("/etc/gpu-agent/agent.d/fleet.toml"),
            fleet.to_string(),
        ),
    ])
}

fn err(fleet: &str) -> String {
    load(fleet).expect_err("refused").to_string()
}

#[test]
fn no_fleet_table_means_a_lone_host() {
    assert!(load("").unwrap().fleet.is_none());
}

#[test]
fn fleet_defaults_and_options() {
    let s = load("[fleet]\netcd = [\"http://127.0.0.1:2379\", \"https://etcd-2:2379\"]\n").unwrap();
    let f = s.fleet.unwrap();
    assert_eq!(
        f.group, "127.0.0.1_5055_acme_worker",
        "default group from image.repository"
    );
    assert_eq!(f.etcd.len(), 2);
    assert!(!f.insecure);
    let opts = crate::fleet::EtcdOptions::from(&f);
    assert_eq!(
        opts.endpoints,
        ["http://127.0.0.1:2379", "https://etcd-2:2379"]
    );
}

#[test]
fn fleet_errors_name_the_key_and_the_file() {
    let e = err("[fleet]\ngroup = \"g\"\n");
    assert!(e.contains("fleet.etcd") && e.contains("required"), "{e}");
    let e = err("[fleet]\netcd = []\n");
    assert!(
        e.contains("fleet.etcd") && e.contains("agent.d/fleet.toml"),
        "{e}"
    );
    let e = err("[fleet]\netcd = [\"http://10.0.0.5:2379\"]\n");
    assert!(
        e.contains("plain http") && e.contains("fleet.insecure"),
        "{e}"
    );
    assert!(load("[fleet]\netcd = [\"http://10.0.0.5:2379\"]\ninsecure = true\n").is_ok());
    let e = err("[fleet]\netcd = [\"etcd-1:2379\"]\n");
    assert!(e.contains("fleet.etcd"), "{e}");
    let e = err("[fleet]\netcd = [\"https://e:2379\"]\ngroup = \"a/b\"\n");
    assert!(e.contains("fleet.group"), "{e}");
    let e = err("[fleet]\netcd = [\"https://e:2379\"]\nusername = \"u\"\n");
    assert!(e.contains("fleet.password_file"), "{e}");
    let e = err("[fleet]\netcd = [\"https://e:2379\"]\nca_file = \"/nonexistent/ca.pem\"\n");
    assert!(
        e.contains("fleet.ca_file") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
    let e = err("[fleet]\netcd = [\"https://e:2379\"]\ncert_file = \"/etc/hostname\"\n");
    assert!(
        e.contains("fleet.cert_file") && e.contains("key_file"),
        "{e}"
    );
    let e = err("[fleet]\netcd = [\"https://e:2379\"]\nmax_unavailable = 2\n");
    assert!(
        e.contains("unknown field") && e.contains("fleet.toml"),
        "{e}"
    );
}
