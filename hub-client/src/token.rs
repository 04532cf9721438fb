//! The bearer token, read from `hub.token_file` and read again when the file changes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::error::HubError;

/// Where the token comes from. Cheap to ask: the file is only re-read when
/// its size, modification time or inode changed since the last read.
/// Its `Debug` shows the path, never the token.
pub struct TokenSource {
    path: Option<PathBuf>,
    cached: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Cached {
    stamp: Stamp,
    token: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: Option<SystemTime>,
    ino: u64,
}

impl TokenSource {
    /// No token: requests go without `Authorization`.
    pub fn none() -> TokenSource {
        TokenSource {
            path: None,
            cached: Mutex::new(None),
        }
    }

    pub fn file(path: impl Into<PathBuf>) -> TokenSource {
        TokenSource {
            path: Some(path.into()),
            cached: Mutex::new(None),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The token now (`None` without a token file). A token file readable by
    /// others than its owner is used, with a warning each time it is (re-)read.
    pub fn get(&self) -> Result<Option<String>, HubError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let io = |source| HubError::Token {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let stamp = Stamp {
            len: meta.len(),
            mtime: meta.modified().ok(),
            ino: meta.ino(),
        };
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_ref().filter(|c| c.stamp == stamp) {
            return Ok(Some(c.token.clone()));
        }
        if meta.mode() & 0o044 != 0 {
            let who = if meta.mode() & 0o004 != 0 {
                "every user"
            } else {
                "its group"
            };
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", meta.mode() & 0o777),
                "the hub token file is readable by {who}: chown root and chmod 600, or hand it \
                 to the agent with systemd's LoadCredential= (see the README)"
            );
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let token = text.trim().to_string();
        if token.is_empty() {
            return Err(HubError::EmptyToken { path: path.clone() });
        }
        if cached.is_some() {
            tracing::info!(path = %path.display(), "hub token file changed; using the new token");
        }
        *cached = Some(Cached {
            stamp,
            token: token.clone(),
        });
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn reads_trims_and_rereads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "abc\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = TokenSource::file(&p);
        assert_eq!(t.get().unwrap().as_deref(), Some("abc"));
        // Replaced the way tools do it (write a new file, rename over): new inode.
        let q = dir.path().join("token.new");
        std::fs::write(&q, "defg\n").unwrap();
        std::fs::rename(&q, &p).unwrap();
        assert_eq!(t.get().unwrap().as_deref(), Some("defg"));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "s3cr3t-value").unwrap();
        let t = TokenSource::file(&p);
        t.get().unwrap();
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }

    #[test]
    fn missing_and_empty_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope");
        let e = TokenSource::file(&p).get().unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        std::fs::write(&p, "  \n").unwrap();
        let e = TokenSource::file(&p).get().unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        assert_eq!(TokenSource::none().get().unwrap(), None);
    }
}
