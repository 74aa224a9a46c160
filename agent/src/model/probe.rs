//! Egress probe targets, as the configuration names them.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProbeTarget {
    /// A TCP handshake to HOST:PORT.
    Tcp { host: String, port: u16 },
    /// An HTTP/1.1 GET answered with a 2xx or 3xx status.
    Http {
        host: String,
        port: u16,
        path: String,
    },
}

impl ProbeTarget {
    pub fn parse(text: &str) -> Result<ProbeTarget, String> {
        if let Some(rest) = text.strip_prefix("tcp://") {
            let (host, port) = split_host_port(rest, None)
                .ok_or_else(|| format!("{text:?}: expected tcp://HOST:PORT"))?;
            return Ok(ProbeTarget::Tcp { host, port });
        }
        if let Some(rest) = text.strip_prefix("http://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let (host, port) = split_host_port(authority, Some(80))
                .ok_or_else(|| format!("{text:?}: expected http://HOST[:PORT]/PATH"))?;
            return Ok(ProbeTarget::Http {
                host,
                port,
                path: path.to_string(),
            });
        }
        Err(format!("{text:?}: a target starts with tcp:// or http://"))
    }

    pub fn label(&self) -> String {
        match self {
            ProbeTarget::Tcp { host, port } => format!("tcp://{host}:{port}"),
            ProbeTarget::Http { host, port, path } => format!("http://{host}:{port}{path}"),
        }
    }
}

fn split_host_port(text: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (text, default_port?),
    };
    if host.is_empty() || port == 0 || host.contains(['/', ' ', '@']) {
        return None;
    }
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            ProbeTarget::parse("tcp://1.1.1.1:443").unwrap(),
            ProbeTarget::Tcp {
                host: "1.1.1.1".into(),
                port: 443
            }
        );
        assert_eq!(
            ProbeTarget::parse("http://checkip.amazonaws.com").unwrap(),
            ProbeTarget::Http {
                host: "checkip.amazonaws.com".into(),
                port: 80,
                path: "/".into()
            }
        );
        assert_eq!(
            ProbeTarget::parse("http://198.51.100.10:8080/health?x=1")
                .unwrap()
                .label(),
            "http://198.51.100.10:8080/health?x=1"
        );
        for bad in [
            "tcp://host",
            "tcp://:80",
            "https://x/",
            "udp://a:1",
            "tcp://a:0",
            "tcp://a:99999",
        ] {
            assert!(ProbeTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
