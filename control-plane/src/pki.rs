//! The cluster's PKI: a CA made on first start, the API server's serving certificate (made
//! anew on every start so its names follow the flags), client certificates (the admin's and
//! the nodes' `system:node:NAME` identities), and the kubeconfig files that carry them.
//!
//! Also the key pair that signs service-account tokens (`sa.key`, `sa.pub`).
//!
//! Owns `DATA_DIR/tls/` and the kubeconfigs it writes. Keys are ECDSA P-256. It must not
//! decide who may do what: identities are names in certificates; authorization reads them.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Failures of the PKI. None is retryable without fixing the data directory.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating or parsing a key or certificate failed.
    #[error("{what}: {source}")]
    Crypto {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// There is no CA to issue from: the server has not run with this data directory.
    #[error(
        "no cluster CA in {}: start corten-server once with this --data-dir first",
        dir.display()
    )]
    NoCa {
        /// The directory that should hold `ca.crt` and `ca.key`.
        dir: PathBuf,
    },
    /// A node name that cannot be a Node object's name.
    #[error("node name {name:?} is not a DNS-1123 subdomain ({reason})")]
    InvalidNodeName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: String,
    },
}

/// A PEM certificate with its PEM private key.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// The cluster CA, loaded or created under `DATA_DIR/tls`.
#[derive(Debug)]
pub struct ClusterCa {
    dir: PathBuf,
    pair: CertPair,
}

const CA_CN: &str = "corten-ca";

/// The group of every node's identity (as upstream: the Node authorizer keys on it).
pub const NODES_GROUP: &str = "system:nodes";

/// The PKI directory of a server data directory.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// The user name a node authenticates as: `system:node:NAME`.
pub fn node_user(node_name: &str) -> String {
    format!("system:node:{node_name}")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn crypto(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Crypto {
        what: what.to_owned(),
        source,
    }
}

fn write_private(path: &Path, content: &str) -> Result<(), PkiError> {
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

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

fn name(cn: &str, orgs: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    for org in orgs {
        dn.push(DnType::OrganizationName, *org);
    }
    dn
}

impl ClusterCa {
    /// Loads the CA from `dir`, creating it on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        match Self::load(dir) {
            Err(PkiError::NoCa { .. }) => {}
            loaded => return loaded,
        }
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let key = KeyPair::generate().map_err(crypto("generating the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(CA_CN, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 3650);
        let cert = params.self_signed(&key).map_err(crypto("signing the CA"))?;
        let pair = CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&cert_path, &pair.cert_pem).map_err(io(&cert_path))?;
        write_private(&key_path, &pair.key_pem)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            pair,
        })
    }

    /// Loads the CA that a server made in `dir`; never makes one (issuing from a CA nobody
    /// serves with would give certificates no server accepts).
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if !(cert_path.exists() && key_path.exists()) {
            return Err(PkiError::NoCa {
                dir: dir.to_path_buf(),
            });
        }
        let pair = CertPair {
            cert_pem: std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?,
            key_pem: std::fs::read_to_string(&key_path).map_err(io(&key_path))?,
        };
        // Parse now, so a damaged CA is reported at once.
        let key = KeyPair::from_pem(&pair.key_pem).map_err(crypto("reading ca.key"))?;
        Issuer::from_ca_cert_pem(&pair.cert_pem, key).map_err(crypto("reading ca.crt"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            pair,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.pair.cert_pem
    }

    /// The directory the PKI files live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn issue(&self, mut params: CertificateParams, days: i64) -> Result<CertPair, PkiError> {
        let ca_key = KeyPair::from_pem(&self.pair.key_pem).map_err(crypto("reading ca.key"))?;
        let issuer = Issuer::from_ca_cert_pem(&self.pair.cert_pem, ca_key)
            .map_err(crypto("reading ca.crt"))?;
        let key = KeyPair::generate().map_err(crypto("generating a key"))?;
        validity(&mut params, days);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(crypto("signing a certificate"))?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A serving certificate for the API server with these DNS names and addresses.
    pub fn issue_serving(&self, dns: &[String], ips: &[IpAddr]) -> Result<CertPair, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name("kube-apiserver", &[]);
        params.subject_alt_names = dns
            .iter()
            .filter_map(|d| d.clone().try_into().ok().map(SanType::DnsName))
            .chain(ips.iter().map(|ip| SanType::IpAddress(*ip)))
            .collect();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, 365)
    }

    /// A client certificate for user `cn` in groups `orgs` (Kubernetes reads the user from
    /// the CN and the groups from the O fields).
    pub fn issue_client(&self, cn: &str, orgs: &[&str]) -> Result<CertPair, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(cn, orgs);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, 365)
    }

    /// Loads a client certificate kept under `tls/NAME.{crt,key}`, issuing it if absent.
    pub fn client_pair(&self, file: &str, cn: &str, orgs: &[&str]) -> Result<CertPair, PkiError> {
        let cert_path = self.dir.join(format!("{file}.crt"));
        let key_path = self.dir.join(format!("{file}.key"));
        if cert_path.exists() && key_path.exists() {
            return Ok(CertPair {
                cert_pem: std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?,
                key_pem: std::fs::read_to_string(&key_path).map_err(io(&key_path))?,
            });
        }
        let pair = self.issue_client(cn, orgs)?;
        std::fs::write(&cert_path, &pair.cert_pem).map_err(io(&cert_path))?;
        write_private(&key_path, &pair.key_pem)?;
        Ok(pair)
    }
}

/// The key that signs service-account tokens: `DATA_DIR/tls/sa.key` (PKCS#8 PEM, ECDSA P-256,
/// for ES256), made on first start with its public half in `sa.pub` (SPKI PEM), as
/// kube-apiserver's `--service-account-signing-key-file` / `--service-account-key-file` pair.
/// Returns the PKCS#8 DER of the private key. Every server that must accept another's tokens
/// needs the same file.
pub fn service_account_key(dir: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key_path = dir.join("sa.key");
    let pub_path = dir.join("sa.pub");
    let key = if key_path.exists() {
        let pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        KeyPair::from_pem(&pem).map_err(crypto("reading sa.key"))?
    } else {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(crypto("generating the service-account signing key"))?;
        write_private(&key_path, &key.serialize_pem())?;
        key
    };
    if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(PkiError::Crypto {
            what: format!("{} is not an ECDSA P-256 key", key_path.display()),
            source: rcgen::Error::UnsupportedSignatureAlgorithm,
        });
    }
    if !pub_path.exists() {
        std::fs::write(&pub_path, key.public_key_pem()).map_err(io(&pub_path))?;
    }
    Ok(key.serialize_der())
}

/// A kubeconfig for node `node_name`'s agent: a new client certificate for
/// `system:node:NAME` in group `system:nodes`, signed by `ca`, for the API at `server`.
pub fn node_kubeconfig(ca: &ClusterCa, node_name: &str, server: &str) -> Result<String, PkiError> {
    if let Some(reason) = crate::apiserver::objects::check_subdomain(node_name) {
        return Err(PkiError::InvalidNodeName {
            name: node_name.to_owned(),
            reason,
        });
    }
    let user = node_user(node_name);
    let client = ca.issue_client(&user, &[NODES_GROUP])?;
    Ok(kubeconfig(server, ca.cert_pem(), &user, &client))
}

/// A kubeconfig for `server` trusting `ca_pem`, authenticating with `client`.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, client: &CertPair) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: corten\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: corten\n  context:\n    cluster: corten\n    user: {user}\ncurrent-context: corten\npreferences: {{}}\n",
        ca = b64(ca_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    )
}

/// Writes a kubeconfig readable only by its owner.
pub fn write_kubeconfig(path: &Path, content: &str) -> Result<(), PkiError> {
    write_private(path, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_signs_what_it_issues() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = ClusterCa::load_or_create(dir.path())?;
        let again = ClusterCa::load_or_create(dir.path())?;
        assert_eq!(ca.cert_pem(), again.cert_pem());
        let admin = ca.issue_client("admin", &["system:masters"])?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(admin.cert_pem.as_bytes())?;
        let cert = pem.parse_x509()?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok());
        assert_eq!(cn, Some("admin"));
        let org = cert
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok());
        assert_eq!(org, Some("system:masters"));
        assert_eq!(
            cert.issuer()
                .iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok()),
            Some(CA_CN)
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("ca.key"))?.permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        Ok(())
    }

    /// The value of `key: VALUE` on the first line of a kubeconfig that has it.
    fn kubeconfig_field<'a>(kubeconfig: &'a str, key: &str) -> Option<&'a str> {
        kubeconfig
            .lines()
            .find_map(|line| line.trim().strip_prefix(key)?.strip_prefix(": "))
    }

    #[test]
    fn a_node_kubeconfig_names_the_node_and_is_signed_by_the_cluster_ca(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = ClusterCa::load_or_create(dir.path())?;
        let server = "https://172.30.0.10:6443";
        let text = node_kubeconfig(&ca, "worker-1", server)?;
        // It parses as a kubeconfig and points at the server given.
        let parsed: serde_yaml::Value = serde_yaml::from_str(&text)?;
        assert_eq!(
            parsed["clusters"][0]["cluster"]["server"].as_str(),
            Some(server)
        );
        assert_eq!(
            parsed["users"][0]["name"].as_str(),
            Some("system:node:worker-1")
        );

        let b64 = base64::engine::general_purpose::STANDARD;
        let cert_pem = b64.decode(
            kubeconfig_field(&text, "client-certificate-data").ok_or("no client certificate")?,
        )?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&cert_pem)?;
        let cert = pem.parse_x509()?;
        let subject = cert.subject();
        let cn: Vec<&str> = subject
            .iter_common_name()
            .filter_map(|c| c.as_str().ok())
            .collect();
        assert_eq!(cn, ["system:node:worker-1"]);
        let orgs: Vec<&str> = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .collect();
        assert_eq!(orgs, [NODES_GROUP]);
        let usage = cert.extended_key_usage()?.ok_or("no extended key usage")?;
        assert!(usage.value.client_auth && !usage.value.server_auth);

        // Signed by this CA: its signature verifies with the CA's key.
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes())?;
        let ca_cert = ca_pem.parse_x509()?;
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key()))?;

        // The key in the kubeconfig is the certificate's.
        let key_pem =
            b64.decode(kubeconfig_field(&text, "client-key-data").ok_or("no client key")?)?;
        let key = KeyPair::from_pem(std::str::from_utf8(&key_pem)?)?;
        assert_eq!(
            key.public_key_raw(),
            cert.public_key().subject_public_key.data.as_ref()
        );

        // The CA in it is the cluster's.
        let ca_in_config =
            b64.decode(kubeconfig_field(&text, "certificate-authority-data").ok_or("no CA")?)?;
        assert_eq!(ca_in_config, ca.cert_pem().as_bytes());
        Ok(())
    }

    #[test]
    fn the_service_account_key_is_made_once_and_kept_private(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let first = service_account_key(dir.path())?;
        let again = service_account_key(dir.path())?;
        assert_eq!(first, again);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("sa.key"))?.permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let public = std::fs::read_to_string(dir.path().join("sa.pub"))?;
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
        // Another directory gets another key.
        let other = tempfile::tempdir()?;
        assert_ne!(service_account_key(other.path())?, first);
        Ok(())
    }

    #[test]
    fn node_names_must_be_object_names() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = ClusterCa::load_or_create(dir.path())?;
        for bad in ["", "Upper", "a_b", "-x", "x:y"] {
            let err = node_kubeconfig(&ca, bad, "https://127.0.0.1:6443");
            assert!(
                matches!(err, Err(PkiError::InvalidNodeName { .. })),
                "{bad:?} was accepted"
            );
        }
        Ok(())
    }

    #[test]
    fn loading_never_makes_a_ca() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let err = ClusterCa::load(dir.path());
        assert!(matches!(err, Err(PkiError::NoCa { .. })));
        assert!(!dir.path().join("ca.crt").exists());
        assert!(!dir.path().join("ca.key").exists());
        let made = ClusterCa::load_or_create(dir.path())?;
        let loaded = ClusterCa::load(dir.path())?;
        assert_eq!(made.cert_pem(), loaded.cert_pem());
        Ok(())
    }
}
