//! Sets `GPU_AGENT_COMMIT` for `gpu-agent version` and `gpu_agent_build_info`:
//! the git commit the binaries are built from (12 hex digits),
//! `GPU_AGENT_COMMIT` from the environment when set
//! (a build from a source tarball), else `unknown` (no git, or not a repository).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=GPU_AGENT_COMMIT");
    let commit = std::env::var("GPU_AGENT_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Rebuild when HEAD moves (a commit, a checkout).
    // (A worktree keeps HEAD in its own git dir and the branches in the common one.)
    let mut watch = Vec::new();
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        watch.push(std::path::Path::new(&dir).join("HEAD"));
    }
    if let (Some(common), Some(r)) = (
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ) {
        let common = std::path::Path::new(&common);
        watch.push(common.join(r));
        watch.push(common.join("packed-refs"));
    }
    for p in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rustc-env=GPU_AGENT_COMMIT={commit}");
}
