//! Image names as written in `image.repository`: parsing, docker.io normalisation,
//! and the URLs and pull references derived from them.

use std::fmt;

use super::RegistryError;

/// The canonical name of Docker Hub.
pub(super) const DOCKER_HUB: &str = "docker.io";

/// A registry host and a repository path in it, without tag or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageName {
    /// `host[:port]`; Docker Hub is always `docker.io`.
    pub registry: String,
    /// `acme/worker`; Docker Hub's official images get `library/`.
    pub repository: String,
}

impl ImageName {
    /// Parses `ghcr.io/acme/worker`, `127.0.0.1:5055/test/worker`, `ubuntu`, ...
    ///
    /// The first path part is a registry host when it contains `.` or `:` or is
    /// `localhost`; otherwise the name is on Docker Hub. A tag or digest in the
    /// name is refused: the config has separate `tag` and `version` keys.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let invalid = |reason: &str| RegistryError::InvalidName {
            name: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(invalid("it is empty"));
        }
        if let Some((scheme, rest)) = s.split_once("://") {
            return Err(invalid(&format!(
                "a repository is a name, not a URL: drop the `{scheme}://` and write {rest:?}"
            )));
        }
        if s.contains('@') {
            return Err(invalid(
                "it holds a digest: give the repository alone and the tag or version in their own keys",
            ));
        }
        let (host, path) = match s.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first), rest)
            }
            _ => (None, s),
        };
        if path.contains(':') {
            return Err(invalid(
                "it holds a tag: give the repository alone and the tag or version in their own keys",
            ));
        }
        let registry = match host {
            None => DOCKER_HUB.to_string(),
            Some(host) => {
                check_host(host).map_err(invalid)?;
                let lower = host.to_ascii_lowercase();
                if matches!(
                    lower.as_str(),
                    "docker.io" | "index.docker.io" | "registry-1.docker.io"
                ) {
                    DOCKER_HUB.to_string()
                } else {
                    host.to_string()
                }
            }
        };
        check_path(path).map_err(invalid)?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        Ok(ImageName {
            registry,
            repository,
        })
    }

    /// Whether the image is on Docker Hub (always https).
    pub fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB
    }

    /// The base URL of the registry's API: `https://registry-1.docker.io` for
    /// Docker Hub, `http://host` when `insecure`, else `https://host`.
    pub fn api_base(&self, insecure: bool) -> String {
        if self.registry == DOCKER_HUB {
            "https://registry-1.docker.io".to_string()
        } else if insecure {
            format!("http://{}", self.registry)
        } else {
            format!("https://{}", self.registry)
        }
    }

    /// The reference the engine pulls: `registry/repository@digest`.
    pub fn pull_ref(&self, digest: &str) -> String {
        format!("{self}@{digest}")
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

fn check_host(host: &str) -> Result<(), &'static str> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && !host.ends_with(']') => (name, Some(port)),
        _ => (host, None),
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("the registry port is not a number");
        }
    }
    let ok = !name.is_empty()
        && (name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            || (name.starts_with('[')
                && name.ends_with(']')
                && name[1..name.len() - 1]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')));
    if ok {
        Ok(())
    } else {
        Err("the registry host is not a valid host name")
    }
}

/// Path components are lowercase alphanumerics joined by `.`, `_`, `__` or runs of `-`.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.len() > 255 {
        return Err("the repository path is longer than 255 characters");
    }
    for component in path.split('/') {
        if !valid_component(component) {
            return Err(
                "each part of the repository path must be lowercase letters and digits, \
                 joined by '.', '_', '__' or '-'",
            );
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) if alnum(first) && alnum(last) => {}
        _ => return false,
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &c[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> (String, String) {
        let n = ImageName::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (n.registry, n.repository)
    }

    fn own(a: &str, b: &str) -> (String, String) {
        (a.to_string(), b.to_string())
    }

    #[test]
    fn names_with_a_host() {
        assert_eq!(parsed("ghcr.io/acme/worker"), own("ghcr.io", "acme/worker"));
        assert_eq!(
            parsed("127.0.0.1:5055/test/worker"),
            own("127.0.0.1:5055", "test/worker")
        );
        assert_eq!(parsed("localhost/worker"), own("localhost", "worker"));
        assert_eq!(
            parsed("localhost:5000/a/b/c"),
            own("localhost:5000", "a/b/c")
        );
        assert_eq!(parsed("[::1]:5000/worker"), own("[::1]:5000", "worker"));
        assert_eq!(
            parsed("registry.example.com/a_b/c-d.e__f"),
            own("registry.example.com", "a_b/c-d.e__f")
        );
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        assert_eq!(parsed("ubuntu"), own("docker.io", "library/ubuntu"));
        assert_eq!(parsed("acme/worker"), own("docker.io", "acme/worker"));
        assert_eq!(parsed("docker.io/x/y"), own("docker.io", "x/y"));
        assert_eq!(parsed("index.docker.io/x/y"), own("docker.io", "x/y"));
        assert_eq!(
            parsed("docker.io/ubuntu"),
            own("docker.io", "library/ubuntu")
        );
        // Not a host: no '.', no ':', not localhost.
        assert_eq!(parsed("myhost/worker"), own("docker.io", "myhost/worker"));
    }

    #[test]
    fn tags_and_digests_are_refused_with_a_hint() {
        for s in [
            "x:1",
            "ghcr.io/acme/worker:stable",
            "127.0.0.1:5055/test/worker:1",
        ] {
            let e = ImageName::parse(s).unwrap_err().to_string();
            assert!(e.contains("holds a tag"), "{s}: {e}");
        }
        let digest = format!("x@sha256:{}", "a".repeat(64));
        let e = ImageName::parse(&digest).unwrap_err().to_string();
        assert!(e.contains("holds a digest"), "{e}");
    }

    #[test]
    fn a_url_is_refused_with_the_name_to_write() {
        for (s, name) in [
            ("https://ghcr.io/acme/worker", "\"ghcr.io/acme/worker\""),
            ("http://127.0.0.1:5000/w", "\"127.0.0.1:5000/w\""),
        ] {
            let e = ImageName::parse(s).unwrap_err().to_string();
            assert!(e.contains("not a URL"), "{s}: {e}");
            assert!(e.contains(name), "{s}: {e}");
            assert!(!e.contains("port"), "{s}: {e}");
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for s in [
            "",
            "Ubuntu",
            "ghcr.io/Acme/worker",
            "ghcr.io/",
            "ghcr.io//x",
            "ghcr.io/x/",
            "-x",
            "x-",
            "a..b",
            "a___b",
            "bad host!/x",
            "host:port/x",
            "with space",
        ] {
            assert!(ImageName::parse(s).is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn api_base_and_pull_ref() {
        let hub = ImageName::parse("ubuntu").unwrap();
        assert_eq!(hub.api_base(false), "https://registry-1.docker.io");
        assert_eq!(hub.api_base(true), "https://registry-1.docker.io");
        let digest = format!("sha256:{}", "0".repeat(64));
        assert_eq!(
            hub.pull_ref(&digest),
            format!("docker.io/library/ubuntu@{digest}")
        );
        let local = ImageName::parse("127.0.0.1:5055/test/worker").unwrap();
        assert_eq!(local.api_base(true), "http://127.0.0.1:5055");
        assert_eq!(local.api_base(false), "https://127.0.0.1:5055");
        assert_eq!(
            local.pull_ref(&digest),
            format!("127.0.0.1:5055/test/worker@{digest}")
        );
        assert_eq!(local.to_string(), "127.0.0.1:5055/test/worker");
    }
}
