//! Addresses as the agent reads them from its settings and its route
//! tables: `HOST:PORT` pairs and http(s) URLs. A leaf module: the
//! configuration and the route-table validation both use it.

use std::net::SocketAddr;

/// `http(s)://host[:port]/...` → (scheme, host). `{app}` / `{stream}`
/// placeholders are allowed in the path.
pub fn parse_http_url(url: &str) -> Option<(&'static str, String)> {
    let filled = url.replace("{app}", "app").replace("{stream}", "stream");
    let uri: axum::http::Uri = filled.parse().ok()?;
    let scheme = match uri.scheme_str()? {
        "http" => "http",
        "https" => "https",
        _ => return None,
    };
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((scheme, host.to_owned()))
}

/// A `HOST:PORT` pair; the host may be a name, an IPv4 address or a
/// bracketed IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host without brackets (`::1`, `127.0.0.1`, `sched.example`).
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn parse(s: &str) -> Option<Self> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Some(Self {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        let (host, port) = s.rsplit_once(':')?;
        let port = port.parse().ok()?;
        let name_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        name_ok.then(|| Self {
            host: host.to_owned(),
            port,
        })
    }

    /// The host as it goes into a URL or a `HOST:PORT` string (IPv6 bracketed).
    pub fn authority_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.authority_host(), self.port)
    }
}
