//! The MITM certificate authority and per-host leaf certificates.
//!
//! One CA per user, generated once and cached at
//! `<cache root>/mitm/ca.{crt,key}` (ECDSA P-256, 10 years); the guest
//! trusts it through `/etc/gondolin/mitm/ca.crt`. Leaves are minted on
//! first use for each SNI name (or IP), signed by the CA, and kept in
//! memory per process (bounded).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

const CA_NAME: &str = "gondolin-mitm-ca";
const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 825;
/// Leaf configs kept per process.
const LEAF_CACHE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("MITM CA at {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error("minting a certificate for {name}: {message}")]
    Leaf { name: String, message: String },
}

pub struct MitmCa {
    cert: Certificate,
    key: KeyPair,
    pem: String,
    leaf_key: KeyPair,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl std::fmt::Debug for MitmCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MitmCa").finish_non_exhaustive()
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The host's CA certificates (honours `SSL_CERT_FILE` / `SSL_CERT_DIR`,
/// like OpenSSL), read once per process: HTTPS upstreams and `wss://`
/// remote servers are verified against them.
pub fn native_roots() -> rustls::RootCertStore {
    static ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                tracing::warn!(target: "gondolin::net", "no system CA certificates found: TLS to public servers will fail verification");
            }
            roots
        })
        .clone()
}

/// The MITM server's crypto: ChaCha20-Poly1305 preferred. The guest has to
/// decrypt everything it downloads, and under TCG emulation its ChaCha20
/// runs ~1.5x faster than AES-GCM (52 vs 35 MB/s measured with `openssl
/// speed` in the guest); on the host either is far faster than the guest.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        let name = format!("{:?}", s.suite());
        !name.contains("CHACHA20")
    });
    Arc::new(p)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days);
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

impl MitmCa {
    /// The process-wide CA from the default cache directory.
    pub fn shared() -> Result<Arc<MitmCa>, TlsError> {
        static CA: OnceLock<Arc<MitmCa>> = OnceLock::new();
        if let Some(ca) = CA.get() {
            return Ok(ca.clone());
        }
        let dir = crate::image::cache_root().join("mitm");
        let ca = Arc::new(MitmCa::load_or_create(&dir)?);
        Ok(CA.get_or_init(|| ca).clone())
    }

    /// Load `dir/ca.{crt,key}`, or create them if missing or unusable.
    pub fn load_or_create(dir: &Path) -> Result<MitmCa, TlsError> {
        let err = |m: String| TlsError::Ca {
            path: dir.to_path_buf(),
            message: m,
        };
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if let (Ok(pem), Ok(kpem)) = (std::fs::read_to_string(&crt), std::fs::read_to_string(&key))
        {
            if let Ok(ca) = Self::from_pem(&pem, &kpem) {
                return Ok(ca);
            }
        }
        let key_pair = KeyPair::generate().map_err(|e| err(e.to_string()))?;
        let mut params = ca_params();
        validity(&mut params, CA_DAYS);
        let cert = params
            .self_signed(&key_pair)
            .map_err(|e| err(e.to_string()))?;
        let pem = cert.pem();
        write_private(dir, "ca.key", key_pair.serialize_pem().as_bytes())
            .map_err(|e| err(e.to_string()))?;
        write_private(dir, "ca.crt", pem.as_bytes()).map_err(|e| err(e.to_string()))?;
        Self::assemble(cert, key_pair, pem).map_err(err)
    }

    fn from_pem(pem: &str, key_pem: &str) -> Result<MitmCa, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| e.to_string())?;
        let params = CertificateParams::from_ca_cert_pem(pem).map_err(|e| e.to_string())?;
        // Two processes creating the CA at once could leave a key that is
        // not the certificate's: then start over.
        let der = pem_der(pem).ok_or("not PEM")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
        if parsed.tbs_certificate.subject_pki.raw != key.public_key_der().as_slice() {
            return Err("key does not match the certificate".into());
        }
        if params.not_after < time::OffsetDateTime::now_utc() + time::Duration::days(30) {
            return Err("expires soon".into());
        }
        // Re-signing the same subject with the same key gives an issuer
        // equivalent to the stored certificate; the guest gets the stored PEM.
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Self::assemble(cert, key, pem.to_string())
    }

    fn assemble(cert: Certificate, key: KeyPair, pem: String) -> Result<MitmCa, String> {
        Ok(MitmCa {
            cert,
            key,
            pem,
            leaf_key: KeyPair::generate().map_err(|e| e.to_string())?,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM, newline-terminated.
    pub fn ca_pem(&self) -> String {
        let mut s = self.pem.clone();
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s
    }

    /// A TLS server config presenting a leaf for `name` (DNS name or IP).
    pub fn server_config(&self, name: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.leaves.lock().unwrap().get(&name) {
            return Ok(c.clone());
        }
        let err = |m: String| TlsError::Leaf {
            name: name.clone(),
            message: m,
        };
        let mut params =
            CertificateParams::new(vec![name.clone()]).map_err(|e| err(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.as_str());
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, LEAF_DAYS);
        let leaf = params
            .signed_by(&self.leaf_key, &self.cert, &self.key)
            .map_err(|e| err(e.to_string()))?;
        let chain = vec![
            leaf.der().clone(),
            CertificateDer::from(self.cert.der().to_vec()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(server_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| err(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Our order wins: ChaCha20 first (see server_provider).
        config.ignore_client_order = true;
        let config = Arc::new(config);
        let mut leaves = self.leaves.lock().unwrap();
        if leaves.len() >= LEAF_CACHE {
            leaves.clear();
        }
        leaves.insert(name, config.clone());
        Ok(config)
    }
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_cached_and_leaves_verify() {
        let dir = std::env::temp_dir().join(format!("gondolin-ca-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = MitmCa::load_or_create(&dir).unwrap();
        let again = MitmCa::load_or_create(&dir).unwrap();
        assert_eq!(
            ca.ca_pem(),
            again.ca_pem(),
            "second load reuses the cached CA"
        );
        assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let mode = std::fs::metadata(dir.join("ca.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);

        // A leaf minted by the reloaded CA verifies against the stored PEM.
        let config = again.server_config("Example.COM.").unwrap();
        assert!(Arc::ptr_eq(
            &config,
            &again.server_config("example.com").unwrap()
        ));
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let leaf_der = {
            let params = CertificateParams::new(vec!["example.com".to_string()]).unwrap();
            params
                .signed_by(&again.leaf_key, &again.cert, &again.key)
                .unwrap()
                .der()
                .clone()
        };
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = CertificateDer::from(pem_der(&ca.ca_pem()).unwrap());
        roots.add(ca_der).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("example.com").unwrap();
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(
                &leaf_der,
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("leaf chains to the cached CA");
        let ip_config = again.server_config("10.1.2.3");
        assert!(ip_config.is_ok(), "IP addresses get IP SANs");

        // A key that doesn't match the certificate is replaced.
        std::fs::write(
            dir.join("ca.key"),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let fresh = MitmCa::load_or_create(&dir).unwrap();
        assert_ne!(fresh.ca_pem(), ca.ca_pem());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
