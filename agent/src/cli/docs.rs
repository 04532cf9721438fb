//! `agentctl completions SHELL` and the hidden `agentctl man --out DIR`: the
//! shell completions and man pages the `.deb` installs, generated from the
//! same clap definitions as the commands themselves, so they never drift.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, Exit};

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// The folder to write `agentctl.1` and `agentctl-<command>.1` into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn completions(args: &CompletionsArgs) -> Exit {
    let mut cmd = Cli::command();
    // Into a buffer first: clap_complete panics when a write fails (`| head -1`).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "agentctl", &mut script);
    super::output::write_stdout(&script);
    Exit::Ok
}

/// Writes the man pages into `args.out`.
pub fn man(args: &ManArgs) -> Exit {
    match write_man_pages(Cli::command(), &args.out) {
        Ok(written) => {
            for p in written {
                super::output::stdout(&p.display().to_string());
            }
            Exit::Ok
        }
        Err(e) => {
            eprintln!(
                "agentctl: writing man pages into {}: {e}",
                args.out.display()
            );
            Exit::Failed
        }
    }
}

/// Writes `NAME.1` for `cmd` and `NAME-SUB.1` for each visible subcommand;
/// returns the files written. Shared with `gpu-agent man`.
///
/// A subcommand's page is titled `NAME-SUB` (the file man finds) and its
/// synopsis reads `NAME SUB ...` (what one types). clap's own `help`
/// subcommand gets no page, so no page points to one.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let cmd = cmd.disable_help_subcommand(true);
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();
    let page = |cmd: clap::Command, file: PathBuf| -> std::io::Result<PathBuf> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        std::fs::write(&file, buf)?;
        Ok(file)
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_name = format!("{name}-{}", sub.get_name());
        let sub = sub
            .clone()
            .display_name(sub_name.clone())
            .bin_name(format!("{name} {}", sub.get_name()));
        written.push(page(sub, dir.join(format!("{sub_name}.1")))?);
    }
    written.insert(0, page(cmd, dir.join(format!("{name}.1")))?);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(Cli::command(), dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for page in [
            "agentctl.1",
            "agentctl-status.1",
            "agentctl-drain.1",
            "agentctl-rollback.1",
            "agentctl-completions.1",
        ] {
            assert!(names.iter().any(|n| n == page), "{page} not in {names:?}");
        }
        assert!(
            !names.iter().any(|n| n == "agentctl-man.1"),
            "hidden stays hidden"
        );
        let drain = std::fs::read_to_string(dir.path().join("agentctl-drain.1")).unwrap();
        assert!(drain.contains("\\-\\-reason"), "{drain}");
    }

    #[test]
    fn completions_know_the_commands() {
        let mut cmd = Cli::command();
        let mut out = Vec::new();
        clap_complete::generate(Shell::Bash, &mut cmd, "agentctl", &mut out);
        let text = String::from_utf8(out).unwrap();
        for word in ["undrain", "rollback", "--socket", "--json"] {
            assert!(text.contains(word), "{word} not in the bash completions");
        }
    }
}
