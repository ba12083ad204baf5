//! TLS for both control-plane transports (QUIC telemetry and gRPC routes).
//!
//! * Development: [`DevPki::ensure`] creates (once) a CA and a server
//!   certificate under `<data-dir>/dev/` and reuses them on later starts, so
//!   agents holding `ca.pem` keep working across scheduler restarts.
//! * Production: operator-provided PEM files; with a client CA configured
//!   every agent must present a certificate whose subject common name is its
//!   node id ([`peer_node_id`]), and the scheduler refuses any other id.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no usable PEM {what} found")]
    Pem { path: PathBuf, what: &'static str },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Installs the ring crypto provider as the process default (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from_pem(&std::fs::read(path).map_err(io_err(path))?, path)
}

/// Every certificate of PEM text read from `source` (named in errors).
pub fn certs_from_pem(pem: &[u8], source: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: source.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_from_pem(&std::fs::read(path).map_err(io_err(path))?, path)
}

/// The first private key of PEM text read from `source`.
pub fn key_from_pem(pem: &[u8], source: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| TlsError::Pem {
        path: source.to_owned(),
        what: "private key",
    })
}

/// A root store holding the certificates of a PEM file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    roots_from_pem(&std::fs::read(path).map_err(io_err(path))?, path)
}

/// A root store holding the certificates of PEM text read from `source`.
pub fn roots_from_pem(pem: &[u8], source: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(pem, source)? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// Node id bound to a client certificate: its subject common name.
pub fn peer_node_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// How the server treats client certificates.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// Token mode: no client certificate is asked for.
    None,
    /// mTLS: a certificate chaining to these roots is required.
    Required(Arc<RootCertStore>),
}

/// A rustls server configuration with the given ALPN protocols.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_auth: &ClientAuth,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    install_crypto_provider();
    let builder = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13]);
    let mut cfg = match client_auth {
        ClientAuth::None => builder.with_no_client_auth().with_single_cert(chain, key)?,
        ClientAuth::Required(roots) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder(roots.clone())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)?
        }
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A rustls client configuration trusting `roots`, optionally presenting a
/// client certificate.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    install_crypto_provider();
    let builder = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Files of a development PKI.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl DevPki {
    /// Creates `dir/{ca.pem,ca.key,server.pem,server.key}` if missing and
    /// returns their paths. The server certificate names `localhost`,
    /// `127.0.0.1`, `::1` and `extra_names`; it is re-issued when a name is
    /// missing from it.
    pub fn ensure(dir: &Path, extra_names: &[String]) -> Result<Self, TlsError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let pki = Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        if !pki.ca_cert.exists() || !pki.ca_key.exists() {
            let key = KeyPair::generate()?;
            let cert = ca_params("Vantage development CA").self_signed(&key)?;
            write_private(&pki.ca_key, key.serialize_pem().as_bytes())?;
            std::fs::write(&pki.ca_cert, cert.pem()).map_err(io_err(&pki.ca_cert))?;
            let _ = std::fs::remove_file(&pki.server_cert);
        }
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.extend(extra_names.iter().cloned());
        let names_file = dir.join("server.names");
        let wanted = names.join("\n");
        let current = std::fs::read_to_string(&names_file).unwrap_or_default();
        if !pki.server_cert.exists() || !pki.server_key.exists() || current != wanted {
            let issuer = pki.issuer()?;
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name = dn("vantage-scheduler");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let cert = params.signed_by(&key, &issuer)?;
            write_private(&pki.server_key, key.serialize_pem().as_bytes())?;
            std::fs::write(&pki.server_cert, cert.pem()).map_err(io_err(&pki.server_cert))?;
            std::fs::write(&names_file, wanted).map_err(io_err(&names_file))?;
        }
        Ok(pki)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, TlsError> {
        let key_pem = std::fs::read_to_string(&self.ca_key).map_err(io_err(&self.ca_key))?;
        let cert_pem = std::fs::read_to_string(&self.ca_cert).map_err(io_err(&self.ca_cert))?;
        let key = KeyPair::from_pem(&key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&cert_pem, key)?)
    }

    /// Issues a client certificate for `node_id` (subject CN = node id),
    /// written as `<out>/<node_id>.pem` and `.key`. Used by
    /// `vantage-scheduler issue-cert` and by tests of mTLS.
    pub fn issue_client(&self, node_id: &str, out: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
        issue_client_cert(&self.issuer()?, node_id, out)
    }
}

/// Creates a new CA in `dir` (`ca.pem`, `ca.key`) for production use.
pub fn create_ca(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let key = KeyPair::generate()?;
    let cert = ca_params(name).self_signed(&key)?;
    let (c, k) = (dir.join("ca.pem"), dir.join("ca.key"));
    write_private(&k, key.serialize_pem().as_bytes())?;
    std::fs::write(&c, cert.pem()).map_err(io_err(&c))?;
    Ok((c, k))
}

/// Issues a client certificate signed by the CA in `ca_cert`/`ca_key`.
pub fn issue_client_from_files(
    ca_cert: &Path,
    ca_key: &Path,
    node_id: &str,
    out: &Path,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let pki = DevPki {
        ca_cert: ca_cert.to_owned(),
        ca_key: ca_key.to_owned(),
        server_cert: PathBuf::new(),
        server_key: PathBuf::new(),
    };
    pki.issue_client(node_id, out)
}

/// Issues a server certificate for `names` signed by the CA files.
pub fn issue_server_from_files(
    ca_cert: &Path,
    ca_key: &Path,
    names: Vec<String>,
    out: &Path,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let pki = DevPki {
        ca_cert: ca_cert.to_owned(),
        ca_key: ca_key.to_owned(),
        server_cert: PathBuf::new(),
        server_key: PathBuf::new(),
    };
    let issuer = pki.issuer()?;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = dn("vantage-scheduler");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer)?;
    let (c, k) = (out.join("server.pem"), out.join("server.key"));
    write_private(&k, key.serialize_pem().as_bytes())?;
    std::fs::write(&c, cert.pem()).map_err(io_err(&c))?;
    Ok((c, k))
}

fn issue_client_cert(
    issuer: &Issuer<'static, KeyPair>,
    node_id: &str,
    out: &Path,
) -> Result<(PathBuf, PathBuf), TlsError> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(node_id);
    params.subject_alt_names = vec![SanType::DnsName(
        format!("{node_id}.node.vantage").try_into()?,
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer)?;
    let (c, k) = (
        out.join(format!("{node_id}.pem")),
        out.join(format!("{node_id}.key")),
    );
    write_private(&k, key.serialize_pem().as_bytes())?;
    std::fs::write(&c, cert.pem()).map_err(io_err(&c))?;
    Ok((c, k))
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_pki_is_created_once_and_client_identity_is_the_cn() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::ensure(dir.path(), &[]).unwrap();
        let ca1 = std::fs::read(&pki.ca_cert).unwrap();
        let pki = DevPki::ensure(dir.path(), &["sched.example".into()]).unwrap();
        assert_eq!(
            ca1,
            std::fs::read(&pki.ca_cert).unwrap(),
            "CA must be reused"
        );
        let (cert, key) = pki.issue_client("edge-7", dir.path()).unwrap();
        let certs = load_certs(&cert).unwrap();
        assert_eq!(peer_node_id(&certs[0]).as_deref(), Some("edge-7"));
        load_key(&key).unwrap();
        let roots = load_roots(&pki.ca_cert).unwrap();
        server_config(
            load_certs(&pki.server_cert).unwrap(),
            load_key(&pki.server_key).unwrap(),
            &ClientAuth::Required(Arc::new(roots.clone())),
            &[b"x"],
        )
        .unwrap();
        client_config(roots, Some((certs, load_key(&key).unwrap())), &[b"x"]).unwrap();
    }
}
