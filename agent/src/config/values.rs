//! Value types of the configuration: the token source and the client
//! certificate pair (`HOST:PORT` pairs and http(s) URLs are in
//! [`crate::addr`]).

use std::path::PathBuf;

/// The machine's host name, for the default public URL.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Where the enrollment token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Inline(String),
    File(PathBuf),
}

impl TokenSource {
    /// The token; a file is read and trimmed.
    pub fn read(&self) -> Result<String, std::io::Error> {
        match self {
            TokenSource::Inline(t) => Ok(t.clone()),
            TokenSource::File(p) => {
                let t = std::fs::read_to_string(p)?.trim().to_owned();
                if t.is_empty() {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "token file is empty",
                    ))
                } else {
                    Ok(t)
                }
            }
        }
    }
}

/// Client certificate and key for mTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A file key that takes one string or a list of strings (`scheduler =
/// "a:7400"` or `scheduler = ["a:7400", "b:7400"]`).
pub(crate) fn one_or_many<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match <OneOrMany as serde::Deserialize>::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Where the agent reaches one scheduler replica's route service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    /// `https://host:port`.
    pub url: String,
    /// The TLS name checked on its certificate (the URL's host).
    pub host: String,
}
