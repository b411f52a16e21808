//! TLS of the kubelet API: a self-signed serving certificate for the node's name and
//! address (as upstream kubelet makes when it is given none: `<data dir>/pki/kubelet.crt`,
//! kept across restarts), client certificates required and verified against the cluster CA,
//! and the client's identity (CN = user, O = groups) read from its certificate.
//!
//! Owns the kubelet API's certificates; it must not decide what an identity may do.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore,
};

/// Failures setting up the kubelet API's TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Making the serving certificate failed.
    #[error("making the kubelet serving certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate or key does not parse.
    #[error("reading {what}: {source}")]
    Pem {
        /// Which file or value.
        what: String,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// There is no CA to verify clients with (the node kubeconfig carries none).
    #[error(
        "the node kubeconfig has no certificate-authority data to verify API server clients with"
    )]
    NoClientCa,
    /// rustls refused the configuration.
    #[error("configuring TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("building the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A client's identity: the user (certificate CN) and groups (O fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name.
    pub user: String,
    /// The groups.
    pub groups: Vec<String>,
}

/// The identity in a verified client certificate chain (leaf first).
pub fn identity_of(certs: Option<&[CertificateDer<'_>]>) -> Option<Identity> {
    let leaf = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = cert.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(Identity { user, groups })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The serving certificate and key (PEM) under `pki_dir`, made when absent or when it does
/// not name this node's address any more.
pub fn serving_pair(
    pki_dir: &Path,
    node_name: &str,
    node_ip: IpAddr,
) -> Result<(String, String), TlsError> {
    let cert_path = pki_dir.join("kubelet.crt");
    let key_path = pki_dir.join("kubelet.key");
    let marker_path = pki_dir.join("kubelet.names");
    let names = format!("{node_name} {node_ip}");
    if let (Ok(cert), Ok(key), Ok(marker)) = (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
        std::fs::read_to_string(&marker_path),
    ) {
        if marker == names {
            return Ok((cert, key));
        }
    }
    std::fs::create_dir_all(pki_dir).map_err(io(pki_dir))?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{node_name}@corten"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::IpAddress(node_ip)];
    if let Ok(dns) = node_name.to_owned().try_into() {
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    let cert = params.self_signed(&key)?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    write_private(&key_path, &key_pem)?;
    std::fs::write(&cert_path, &cert_pem).map_err(io(&cert_path))?;
    std::fs::write(&marker_path, &names).map_err(io(&marker_path))?;
    Ok((cert_pem, key_pem))
}

fn write_private(path: &Path, content: &str) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    std::io::Write::write_all(&mut file, content.as_bytes()).map_err(io(path))
}

/// The rustls server config: this certificate, client certificates required and signed by
/// one of `client_cas` (DER).
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_cas: &[Vec<u8>],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in client_cas {
        roots.add(CertificateDer::from(der.clone()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoClientCa);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: "the serving certificate".to_owned(),
            source,
        })?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| TlsError::Pem {
            what: "the serving key".to_owned(),
            source,
        })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_certificate_names_the_node_and_is_kept() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let ip: IpAddr = "172.30.0.11".parse()?;
        let (cert, key) = serving_pair(dir.path(), "node-1", ip)?;
        let again = serving_pair(dir.path(), "node-1", ip)?;
        assert_eq!((cert.clone(), key.clone()), again);
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes())?;
        let parsed = pem.parse_x509()?;
        let sans = parsed
            .subject_alternative_name()?
            .map(|s| format!("{:?}", s.value.general_names))
            .unwrap_or_default();
        assert!(sans.contains("node-1"), "{sans}");
        let moved = serving_pair(dir.path(), "node-1", "172.30.0.12".parse()?)?;
        assert_ne!(moved.0, cert, "a new address gets a new certificate");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("kubelet.key"))?.permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        Ok(())
    }

    #[test]
    fn without_a_client_ca_there_is_no_server() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (cert, key) = serving_pair(dir.path(), "n", "10.0.0.1".parse()?)?;
        assert!(matches!(
            server_config(&cert, &key, &[]),
            Err(TlsError::NoClientCa)
        ));
        Ok(())
    }
}
