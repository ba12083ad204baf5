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
