//! Certificates made by a TLS test, as PEM files in a directory of its own: a CA, a server
//! certificate it signed for 127.0.0.1 and localhost, a client certificate it signed (for mutual
//! TLS), and a second CA that signed nothing the servers use (the wrong CA).

use std::{path::PathBuf, sync::Arc};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject as _};

/// The files, and what a server needs in memory.
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed neither the server's nor the client's certificate.
    pub other_ca: PathBuf,
    ca_der: CertificateDer<'static>,
    server_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
}

fn ca(name: &str) -> anyhow::Result<(CertificateParams, KeyPair, String)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let pem = params.self_signed(&key)?.pem();
    Ok((params, key, pem))
}

impl Certs {
    /// Makes them in a fresh directory named after `name`.
    pub fn make(name: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("kt-certs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (ca_params, ca_key, ca_pem) = ca("kafka-tracer test CA")?;
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let leaf = |names: Vec<String>, usage, cn: &str| -> anyhow::Result<_> {
            let mut p = CertificateParams::new(names)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            let server = usage == ExtendedKeyUsagePurpose::ServerAuth;
            p.extended_key_usages = vec![usage];
            if server {
                p.subject_alt_names
                    .push(SanType::IpAddress([127, 0, 0, 1].into()));
            }
            let key = KeyPair::generate()?;
            let cert = p.signed_by(&key, &issuer)?;
            Ok((cert, key))
        };
        let (server, server_key) = leaf(
            vec!["localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "otlp receiver",
        )?;
        let (client, client_key) = leaf(
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            "kafka-tracer",
        )?;
        let (_, _, other_pem) = ca("some other CA")?;
        let write = |file: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(file);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        Ok(Self {
            ca: write("ca.pem", &ca_pem)?,
            server_cert: write("server.pem", &server.pem())?,
            server_key: write("server-key.pem", &server_key.serialize_pem())?,
            client_cert: write("client.pem", &client.pem())?,
            client_key: write("client-key.pem", &client_key.serialize_pem())?,
            other_ca: write("other-ca.pem", &other_pem)?,
            ca_der: CertificateDer::from_pem_slice(ca_pem.as_bytes())?,
            server_der: server.der().clone(),
            server_key_der: server_key.serialize_der(),
            dir,
        })
    }

    /// A server configuration with the server certificate, offering `alpn`; with `mutual`,
    /// clients must present a certificate the CA signed.
    pub fn server_config(
        &self,
        mutual: bool,
        alpn: &[&[u8]],
    ) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if mutual {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone())?;
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone()));
        let mut config = builder.with_single_cert(vec![self.server_der.clone()], key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
