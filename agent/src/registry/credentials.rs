//! Registry credentials from a docker `config.json` and credential helpers.
//!
//! Where the credentials of a registry come from, in order:
//! 1. the helper named for it in `credHelpers`, else the `credsStore` helper:
//!    `docker-credential-<name> get`, the server address on stdin;
//! 2. when there is no helper, or it says "credentials not found": the inline
//!    `auths` entry (`auth` = base64 `user:pass`, or `username`/`password`,
//!    or `identitytoken`);
//! 3. else none: anonymous.
//!
//! Secrets never reach logs or errors: [`Credentials`] redacts itself in `Debug`,
//! and a helper's output is only quoted when it failed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::debug;

use super::name::DOCKER_HUB;
use super::{EngineCredentials, RegistryError};

/// The server address Docker Hub's credentials are stored under.
pub(super) const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Credentials {
    Password {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token, exchanged at the token endpoint.
    IdentityToken {
        username: Option<String>,
        token: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::IdentityToken { username, .. } => f
                .debug_struct("IdentityToken")
                .field("username", username)
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

impl Credentials {
    pub(super) fn into_engine(self, registry: &str) -> EngineCredentials {
        let serveraddress = server_address(registry);
        match self {
            Credentials::Password { username, password } => EngineCredentials {
                username: Some(username),
                password: Some(password),
                identitytoken: None,
                serveraddress,
            },
            Credentials::IdentityToken { username, token } => EngineCredentials {
                username,
                password: None,
                identitytoken: Some(token),
                serveraddress,
            },
        }
    }
}

/// The server address credentials of `registry` are stored under.
pub(super) fn server_address(registry: &str) -> String {
    if registry == DOCKER_HUB {
        DOCKER_HUB_SERVER.to_string()
    } else {
        registry.to_string()
    }
}

/// The parts of a docker `config.json` that matter here; other keys are ignored.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Default, serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthEntry")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl DockerConfig {
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// The helper to ask for `registry`: its `credHelpers` entry, else `credsStore`.
    pub(super) fn helper_for(&self, registry: &str) -> Option<&str> {
        self.cred_helpers
            .iter()
            .find(|(key, _)| normalise_key(key) == registry)
            .map(|(_, helper)| helper.as_str())
            .or(self.creds_store.as_deref())
            .filter(|helper| !helper.is_empty())
    }

    /// The inline `auths` credentials of `registry`, if any. Errors name the key, never the secret.
    pub(super) fn inline(&self, registry: &str) -> Result<Option<Credentials>, String> {
        for (key, entry) in self
            .auths
            .iter()
            .filter(|(k, _)| normalise_key(k) == registry)
        {
            if let Some(creds) =
                entry_credentials(entry).map_err(|e| format!("auths {key:?}: {e}"))?
            {
                return Ok(Some(creds));
            }
        }
        Ok(None)
    }
}

fn entry_credentials(entry: &AuthEntry) -> Result<Option<Credentials>, &'static str> {
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let (mut username, mut password) = (non_empty(&entry.username), non_empty(&entry.password));
    if let Some(auth) = non_empty(&entry.auth) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "\"auth\" is not base64")?;
        let decoded = String::from_utf8(decoded).map_err(|_| "\"auth\" is not UTF-8")?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or("\"auth\" is not base64 of user:password")?;
        // An empty half is no credential (found by fuzzing: ":on" gave an
        // empty username).
        username = Some(user.to_string()).filter(|s| !s.is_empty());
        password = Some(pass.to_string()).filter(|s| !s.is_empty());
    }
    if let Some(token) = non_empty(&entry.identitytoken) {
        return Ok(Some(Credentials::IdentityToken { username, token }));
    }
    match (username, password) {
        (Some(username), Some(password)) => Ok(Some(Credentials::Password { username, password })),
        (None, None) => Ok(None),
        _ => Err("has a username without a password or a password without a username"),
    }
}

/// `https://host/v1/`, `http://host`, `host` → `host`; Docker Hub's aliases → `docker.io`.
pub(super) fn normalise_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        _ => host.to_string(),
    }
}

/// Warns (once per file and mode) when the auth file, which holds registry
/// passwords, is readable by others than its owner (every user, or its group).
fn warn_if_readable_by_all(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    static WARNED: std::sync::Mutex<BTreeMap<PathBuf, u32>> =
        std::sync::Mutex::new(BTreeMap::new());
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    let who = match mode & 0o044 {
        0 => return,
        0o040 => "its group",
        _ => "every user",
    };
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned.insert(path.to_path_buf(), mode) != Some(mode) {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"),
            "the registry auth file (image.auth_file) is readable by {who}: chown root and chmod 600, \
             or hand it to the agent with systemd's LoadCredential= (see the README)");
    }
}

/// Finds the credentials for `registry` (see the module docs for the order).
pub(super) async fn lookup(
    auth_file: Option<&Path>,
    helper_dir: Option<&Path>,
    helper_timeout: Duration,
    registry: &str,
) -> Result<Option<Credentials>, RegistryError> {
    let Some(path) = auth_file else {
        return Ok(None);
    };
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| RegistryError::ReadAuthFile {
            path: path.to_path_buf(),
            source,
        })?;
    warn_if_readable_by_all(path);
    let parse_error = |reason: String| RegistryError::ParseAuthFile {
        path: path.to_path_buf(),
        reason,
    };
    let config = DockerConfig::parse(&bytes).map_err(parse_error)?;
    if let Some(helper) = config.helper_for(registry) {
        let server = server_address(registry);
        if let Some(creds) = run_helper(helper, &server, helper_dir, helper_timeout).await? {
            debug!(registry, helper, "credentials from credential helper");
            return Ok(Some(creds));
        }
        debug!(registry, helper, "credential helper has no credentials");
    }
    let inline = config.inline(registry).map_err(parse_error)?;
    if inline.is_some() {
        debug!(registry, auth_file = %path.display(), "credentials from auth file");
    }
    Ok(inline)
}

/// Runs `docker-credential-<helper> get`. `Ok(None)`: the helper has none for `server`.
pub(super) async fn run_helper(
    helper: &str,
    server: &str,
    helper_dir: Option<&Path>,
    timeout: Duration,
) -> Result<Option<Credentials>, RegistryError> {
    let failed = |reason: String| RegistryError::CredentialHelper {
        helper: helper.to_string(),
        reason,
    };
    if !helper
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || helper.starts_with('.')
    {
        return Err(failed(
            "the helper name may hold only letters, digits, '-', '_' and '.'".into(),
        ));
    }
    let program_name = format!("docker-credential-{helper}");
    let program = match helper_dir {
        Some(dir) => dir.join(&program_name),
        None => PathBuf::from(&program_name),
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                let place = match helper_dir {
                    Some(dir) => dir.display().to_string(),
                    None => "PATH".to_string(),
                };
                failed(format!(
                    "{program_name} is not in {place}: install it or remove it from the auth file"
                ))
            } else {
                failed(format!("starting {}: {e}", program.display()))
            }
        })?;
    let stdin = child.stdin.take();
    let run = async move {
        if let Some(mut stdin) = stdin {
            // A helper that exits without reading stdin is judged by its answer.
            let _ = stdin.write_all(server.as_bytes()).await;
        }
        child.wait_with_output().await
    };
    // On timeout the future, and with it the child, is dropped: kill_on_drop kills it.
    let output = match tokio::time::timeout(timeout, run).await {
        Err(_) => {
            return Err(RegistryError::CredentialHelperTimeout {
                helper: helper.to_string(),
                timeout,
            })
        }
        Ok(Err(e)) => return Err(failed(format!("waiting for it: {e}"))),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if text.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(failed(format!("{}: {}", output.status, first_line(&text))));
    }
    parse_helper_answer(&output.stdout)
        .map(Some)
        .map_err(failed)
}

/// `{"ServerURL": .., "Username": .., "Secret": ..}`; `Username` `<token>` marks an identity token.
pub(super) fn parse_helper_answer(stdout: &[u8]) -> Result<Credentials, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    // The answer is never quoted in errors: it holds the secret.
    let answer: Answer = serde_json::from_slice(stdout)
        .map_err(|_| "its answer is not JSON with Username and Secret".to_string())?;
    if answer.secret.is_empty() {
        return Err("its answer has an empty Secret".into());
    }
    Ok(if answer.username == "<token>" {
        Credentials::IdentityToken {
            username: None,
            token: answer.secret,
        }
    } else {
        Credentials::Password {
            username: answer.username,
            password: answer.secret,
        }
    })
}

fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no output");
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> DockerConfig {
        DockerConfig::parse(json.as_bytes()).unwrap()
    }

    fn password(u: &str, p: &str) -> Option<Credentials> {
        Some(Credentials::Password {
            username: u.into(),
            password: p.into(),
        })
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn auth_entry_forms() {
        let c = config(&format!(
            r#"{{"auths": {{
                "a.example": {{"auth": "{}"}},
                "b.example": {{"username": "bob", "password": "pw"}},
                "c.example": {{"identitytoken": "idtok"}},
                "d.example": {{"auth": "{}", "identitytoken": "idtok2"}},
                "e.example": {{}},
                "f.example": {{"auth": "", "email": "x@y"}}
            }}, "HttpHeaders": {{"X": "y"}}, "psFormat": "table"}}"#,
            b64("alice:pa:ss"),
            b64("dave:unused")
        ));
        assert_eq!(c.inline("a.example").unwrap(), password("alice", "pa:ss"));
        assert_eq!(c.inline("b.example").unwrap(), password("bob", "pw"));
        assert_eq!(
            c.inline("c.example").unwrap(),
            Some(Credentials::IdentityToken {
                username: None,
                token: "idtok".into()
            })
        );
        assert_eq!(
            c.inline("d.example").unwrap(),
            Some(Credentials::IdentityToken {
                username: Some("dave".into()),
                token: "idtok2".into()
            })
        );
        assert_eq!(c.inline("e.example").unwrap(), None);
        assert_eq!(c.inline("f.example").unwrap(), None);
        assert_eq!(c.inline("unknown.example").unwrap(), None);
    }

    #[test]
    fn bad_auth_entries_name_the_key_not_the_secret() {
        let c = config(r#"{"auths": {"a.example": {"auth": "!!not-base64!!"}}}"#);
        let e = c.inline("a.example").unwrap_err();
        assert!(
            e.contains("\"a.example\"") && e.contains("not base64"),
            "{e}"
        );
        assert!(!e.contains("not-base64!!"), "{e}");
        let c = config(&format!(
            r#"{{"auths": {{"a.example": {{"auth": "{}"}}}}}}"#,
            b64("nocolon")
        ));
        assert!(c.inline("a.example").unwrap_err().contains("user:password"));
        // An empty user or password in "auth" is half a credential.
        for half in [":pass", "user:"] {
            let c = config(&format!(
                r#"{{"auths": {{"a.example": {{"auth": "{}"}}}}}}"#,
                b64(half)
            ));
            let e = c.inline("a.example").unwrap_err();
            assert!(e.contains("without a"), "{half}: {e}");
        }
        let c = config(r#"{"auths": {"a.example": {"username": "u"}}}"#);
        assert!(c.inline("a.example").is_err());
        assert!(DockerConfig::parse(b"{\"auths\": []}").is_err());
        assert!(DockerConfig::parse(b"not json").is_err());
    }

    #[test]
    fn key_forms_match_the_registry() {
        let c = config(&format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "https://ghcr.io": {{"auth": "{}"}},
                "http://127.0.0.1:5055/v2/": {{"auth": "{}"}}
            }}}}"#,
            b64("hub:1"),
            b64("gh:2"),
            b64("local:3")
        ));
        assert_eq!(c.inline("docker.io").unwrap(), password("hub", "1"));
        assert_eq!(c.inline("ghcr.io").unwrap(), password("gh", "2"));
        assert_eq!(c.inline("127.0.0.1:5055").unwrap(), password("local", "3"));
        assert_eq!(c.inline("127.0.0.1:5056").unwrap(), None);
        for key in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "https://index.docker.io/v1/",
        ] {
            assert_eq!(normalise_key(key), "docker.io", "{key}");
        }
        assert_eq!(normalise_key("localhost:5000"), "localhost:5000");
    }

    #[test]
    fn cred_helpers_take_precedence_over_creds_store() {
        let c = config(
            r#"{"credsStore": "desktop",
                "credHelpers": {"ghcr.io": "gh", "https://index.docker.io/v1/": "hub"}}"#,
        );
        assert_eq!(c.helper_for("ghcr.io"), Some("gh"));
        assert_eq!(c.helper_for("docker.io"), Some("hub"));
        assert_eq!(c.helper_for("quay.io"), Some("desktop"));
        let c = config(r#"{"credHelpers": {"ghcr.io": "gh"}}"#);
        assert_eq!(c.helper_for("quay.io"), None);
        let c = config(r#"{"credsStore": ""}"#);
        assert_eq!(c.helper_for("quay.io"), None);
    }

    #[test]
    fn helper_answers() {
        assert_eq!(
            parse_helper_answer(br#"{"ServerURL": "ghcr.io", "Username": "u", "Secret": "s"}"#)
                .unwrap(),
            Credentials::Password {
                username: "u".into(),
                password: "s".into()
            }
        );
        assert_eq!(
            parse_helper_answer(br#"{"Username": "<token>", "Secret": "refresh"}"#).unwrap(),
            Credentials::IdentityToken {
                username: None,
                token: "refresh".into()
            }
        );
        let e = parse_helper_answer(b"Secret=hunter2").unwrap_err();
        assert!(!e.contains("hunter2"));
        assert!(parse_helper_answer(br#"{"Username": "u", "Secret": ""}"#).is_err());
    }

    #[test]
    fn credentials_debug_redacts() {
        let shown = format!(
            "{:?} {:?}",
            password("alice", "hunter2").unwrap(),
            Credentials::IdentityToken {
                username: None,
                token: "idtok".into()
            }
        );
        assert!(shown.contains("alice"));
        assert!(!shown.contains("hunter2") && !shown.contains("idtok"));
        let c = config(r#"{"auths": {"a": {"username": "u", "password": "hunter2"}}}"#);
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn engine_credentials_server_address() {
        let hub = password("u", "p").unwrap().into_engine("docker.io");
        assert_eq!(hub.serveraddress, "https://index.docker.io/v1/");
        assert_eq!(hub.username.as_deref(), Some("u"));
        assert_eq!(hub.password.as_deref(), Some("p"));
        let token = Credentials::IdentityToken {
            username: None,
            token: "t".into(),
        }
        .into_engine("ghcr.io");
        assert_eq!(token.serveraddress, "ghcr.io");
        assert_eq!(token.identitytoken.as_deref(), Some("t"));
        assert_eq!(token.password, None);
    }

    #[tokio::test]
    async fn bad_helper_names_are_refused_before_running_anything() {
        let e = run_helper("../../bin/sh", "ghcr.io", None, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("may hold only"), "{e}");
    }

    #[tokio::test]
    async fn missing_helper_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let e = run_helper("nope", "ghcr.io", Some(dir.path()), Duration::from_secs(1))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("docker-credential-nope is not in"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }
}
