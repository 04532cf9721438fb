//! `gpu-agent check-config`'s checks of this host beyond the config text:
//! what the agent would trip on once started, said before it starts. The
//! running agent does not refuse these (a token file may be provisioned
//! after the agent starts; it warns and retries), but an operator asking
//! "is this config good here?" should hear about them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use super::{ConfigError, Settings};

/// The lowest port the unit may bind: it runs without capabilities
/// (`CapabilityBoundingSet=` in systemd/gpu-agent.service), so no
/// CAP_NET_BIND_SERVICE below the kernel's unprivileged port start.
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// Checks the host for what `settings` needs: the hub token file exists and
/// can be read; the metrics address can be bound by the unit (a port it may
/// bind, an address of this host, not taken by another program). Returns
/// every problem found, each naming its key.
pub fn preflight(settings: &Settings) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    if let Some(p) = settings.hub.as_ref().and_then(|h| h.token_file.as_deref()) {
        if let Err(message) = check_token_file(p) {
            problems.push(ConfigError::Host {
                key: "hub.token_file".into(),
                message,
            });
        }
    }
    if let Some(addr) = settings.agent.metrics_listen {
        if let Err(message) = check_listen(addr, unprivileged_port_start()) {
            problems.push(ConfigError::Host {
                key: "agent.metrics_listen".into(),
                message,
            });
        }
    }
    problems
}

fn check_token_file(p: &Path) -> Result<(), String> {
    match std::fs::metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} does not exist: write the hub's token there (mode 0600), or remove the key",
            p.display()
        )),
        Err(e) => Err(format!("{}: {e}", p.display())),
        Ok(m) if !m.is_file() => Err(format!("{} is not a file", p.display())),
        Ok(_) => match std::fs::read_to_string(p) {
            Err(e) => Err(format!("{} cannot be read: {e}", p.display())),
            Ok(t) if t.trim().is_empty() => Err(format!(
                "{} is empty: write the hub's token there",
                p.display()
            )),
            Ok(_) => Ok(()),
        },
    }
}

fn check_listen(addr: SocketAddr, first_free_port: u16) -> Result<(), String> {
    if addr.port() != 0 && addr.port() < first_free_port {
        return Err(format!(
            "{addr}: the unit runs without capabilities, so it cannot bind a port below \
             {first_free_port}; use one of {first_free_port} or above (e.g. 9464)"
        ));
    }
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if serves_gpu_agent_metrics(addr) {
                // The running agent holds it: what a check before a reload finds.
                Ok(())
            } else {
                Err(format!(
                    "{addr} is in use by another program: choose a free port \
                     (see ss -ltnp) or stop that program"
                ))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Err(format!(
            "{addr} cannot be bound: {e} (no interface of this host has that address; \
             use 127.0.0.1, 0.0.0.0 or one of `ip -brief address`)"
        )),
        Err(e) => Err(format!("{addr} cannot be bound: {e}")),
    }
}

/// Whether a gpu-agent answers `/metrics` at `addr` (within a second).
fn serves_gpu_agent_metrics(addr: SocketAddr) -> bool {
    let mut to = addr;
    if to.ip().is_unspecified() {
        to.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let t = Duration::from_secs(1);
    let Ok(mut s) = TcpStream::connect_timeout(&to, t) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(t));
    let _ = s.set_write_timeout(Some(t));
    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.take(64 * 1024).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).contains("gpu_agent_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_token_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hub-token");
        let e = check_token_file(&p).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(&p, "\n").unwrap();
        assert!(check_token_file(&p).unwrap_err().contains("empty"));
        std::fs::write(&p, "t0k3n\n").unwrap();
        check_token_file(&p).unwrap();
        assert!(check_token_file(dir.path())
            .unwrap_err()
            .contains("not a file"));
    }

    #[test]
    fn a_listen_address_the_unit_cannot_bind_is_named() {
        let low: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let e = check_listen(low, 1024).unwrap_err();
        assert!(e.contains("below 1024"), "{e}");
        // Taken by something that is not an agent.
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = check_listen(addr, 1024).unwrap_err();
        assert!(e.contains("in use by another program"), "{e}");
        drop(taken);
        check_listen(addr, 1024).unwrap();
        // TEST-NET-1 (RFC 5737) is on no interface here; bind only, no traffic.
        let foreign: SocketAddr = "192.0.2.1:9464".parse().unwrap();
        let e = check_listen(foreign, 1024).unwrap_err();
        assert!(e.contains("no interface"), "{e}");
    }
}
