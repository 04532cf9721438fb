//! Who is on the other end of a control-socket connection (`SO_PEERCRED`).
//!
//! The kernel records the uid, gid and pid of the process that connected; no
//! client can claim another. [`serve`](super::serve) attaches a [`Peer`] to every
//! connection, so a handler reads it with `ConnectInfo<Peer>` and the history
//! entry of an operator action can name the user.

use axum::serve::IncomingStream;
use tokio::net::{UnixListener, UnixStream};

/// The credentials of the process that opened a connection; `None` fields when
/// the kernel would not say (never on Linux for a Unix socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
}

impl Peer {
    /// The credentials of `stream`'s peer.
    pub fn of(stream: &UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(c) => Peer {
                uid: Some(c.uid()),
                gid: Some(c.gid()),
                pid: c.pid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the control client's credentials");
                Peer::default()
            }
        }
    }

    /// The user's name where the password database has one (`/etc/passwd`,
    /// else `getent passwd`, which also asks LDAP/SSSD); reads files and may
    /// run a short command, so call it off the async threads
    /// (`spawn_blocking`) or once per action.
    pub fn user_name(&self) -> Option<String> {
        self.uid.and_then(user_name)
    }

    /// What a history entry names: `alice (uid 1000)`, `uid 1000` when the
    /// uid has no name, `unknown` without credentials.
    pub fn describe(&self) -> String {
        match (self.uid, self.user_name()) {
            (Some(uid), Some(name)) => format!("{name} (uid {uid})"),
            (Some(uid), None) => format!("uid {uid}"),
            (None, _) => "unknown".into(),
        }
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Peer {
        Peer::of(stream.io())
    }
}

/// The name of `uid` in the password database, if any.
pub fn user_name(uid: u32) -> Option<String> {
    if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
        if let Some(name) = passwd_name(&passwd, uid) {
            return Some(name);
        }
    }
    let out = std::process::Command::new("getent")
        .args(["passwd", &uid.to_string()])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    passwd_name(&String::from_utf8_lossy(&out.stdout), uid)
}

/// The name of `uid` in passwd-format text, sanitized (a name is shown to operators).
fn passwd_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| crate::text::sanitize(name, 64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real uid of this process, from /proc.
    fn my_uid() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn the_peer_of_a_connection_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::of(&a);
        assert_eq!(peer.uid, Some(my_uid()));
        assert_eq!(peer.pid, Some(std::process::id() as i32));
        let described = peer.describe();
        assert!(
            described.contains(&format!("uid {}", my_uid())),
            "{described}"
        );
    }

    /// The hook in `serve`: a handler behind `into_make_service_with_connect_info`
    /// on a real Unix socket reads the caller's credentials.
    #[tokio::test]
    async fn a_handler_sees_the_callers_credentials() {
        use axum::extract::ConnectInfo;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let app = axum::Router::new().route(
            "/who",
            axum::routing::get(|ConnectInfo(p): ConnectInfo<Peer>| async move {
                format!("uid={:?} pid={:?}", p.uid, p.pid)
            }),
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await
        });
        let mut conn = UnixStream::connect(&path).await.unwrap();
        conn.write_all(b"GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        server.abort();
        let want = format!("uid=Some({}) pid=Some({})", my_uid(), std::process::id());
        assert!(answer.ends_with(&want), "{answer}");
    }

    #[test]
    fn names_come_from_the_password_database() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      alice:x:1000:1000::/home/alice:/bin/sh\n\
                      broken line\n\
                      \u{1b}[2Jevil:x:1001:1001::/:/bin/sh\n";
        assert_eq!(passwd_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(passwd_name(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(passwd_name(passwd, 1001).as_deref(), Some("\\u{1b}[2Jevil"));
        assert_eq!(passwd_name(passwd, 4242), None);
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(
            Peer {
                uid: Some(0),
                ..Peer::default()
            }
            .describe(),
            "root (uid 0)"
        );
        assert_eq!(Peer::default().describe(), "unknown");
    }
}
