//! Helpers for the registry tests: a scriptable mock registry (`mock`), the real
//! distribution registry on loopback (`real`), a JWT token server (`token`), a
//! cosign signer (`cosign`), and small things they share (here).

/// Only the trust tests sign images.
#[allow(dead_code)]
pub mod cosign;
pub mod mock;
pub mod real;
pub mod token;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use gpu_agent::registry::ClientOptions;
use sha2::Digest as _;

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Options for a loopback registry: plain http, short delays.
pub fn options() -> ClientOptions {
    ClientOptions {
        insecure: true,
        retries: 2,
        retry_base_delay: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Writes a docker config.json into `dir` and returns its path.
pub fn write_auth_file(dir: &Path, json: &str) -> PathBuf {
    let path = dir.join("config.json");
    std::fs::write(&path, json).unwrap();
    path
}

/// A config.json with inline `auth` for `registry`.
pub fn auths_json(registry: &str, user: &str, pass: &str) -> String {
    format!(
        r#"{{"auths": {{"{registry}": {{"auth": "{}"}}}}}}"#,
        b64(&format!("{user}:{pass}"))
    )
}

/// Writes an executable script `dir/docker-credential-<name>`.
///
/// A child `sh` writes it, so that this process never holds the file open for
/// writing: a fork in another test thread could otherwise inherit the fd and make
/// executing the script fail with ETXTBSY.
pub fn write_helper(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("docker-credential-{name}"));
    let mut child = Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(&path)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("#!/bin/sh\n{body}\n").as_bytes())
            .unwrap();
    }
    assert!(child.wait().unwrap().success());
    path
}

/// Whether process `pid` is gone (or a zombie waiting to be reaped).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}
