//! TLS for OTLP export over `https://` endpoints, on rustls: the server is checked against the
//! system's roots, or against the CA file that `OTEL_EXPORTER_OTLP_CERTIFICATE` names, and a
//! client certificate and key (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`, `..._CLIENT_KEY`) give
//! mutual TLS. One client configuration serves both transports, gRPC and HTTP.
//!
//! The files are read when the exporter connects, not only at start: a certificate mounted
//! later, or rotated (its modification time changes), is taken at the next export.

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

/// A file named by a setting, with the setting's name for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingFile {
    pub path: PathBuf,
    /// The variable (and flag) that named it, e.g. `OTEL_EXPORTER_OTLP_CERTIFICATE`.
    pub setting: &'static str,
}

impl SettingFile {
    fn describe(&self) -> String {
        format!("{} {}", self.setting, self.path.display())
    }

    fn certificates(&self) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_file_iter(&self.path)
            .with_context(|| format!("reading {}", self.describe()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} is not PEM", self.describe()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            self.describe()
        );
        Ok(certs)
    }
}

/// The TLS settings of the OTLP exporter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates that sign the server's certificate, instead of the system's roots.
    pub ca: Option<SettingFile>,
    /// The client's certificate chain and key, for mutual TLS (both or neither).
    pub client: Option<(SettingFile, SettingFile)>,
}

impl TlsFiles {
    /// Whether any file is named.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    /// The files' modification times, to notice a rotation.
    pub fn stamp(&self) -> Vec<Option<SystemTime>> {
        let client = self.client.iter().flat_map(|(c, k)| [c, k]);
        self.ca
            .iter()
            .chain(client)
            .map(|f| std::fs::metadata(&f.path).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// A client configuration from the files as they are now: the roots, and the client
    /// certificate when there is one. Errors name the setting and the file.
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for cert in ca.certificates()? {
                    roots.add(cert).with_context(|| {
                        format!("a certificate in {} is invalid", ca.describe())
                    })?;
                }
            }
            None => {
                // SSL_CERT_FILE and SSL_CERT_DIR, else the distribution's store.
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                anyhow::ensure!(
                    added > 0,
                    "no system CA certificates found ({}): install ca-certificates, or set OTEL_EXPORTER_OTLP_CERTIFICATE to the collector's CA",
                    found
                        .errors
                        .first()
                        .map_or("the store is empty".to_string(), |e| e.to_string())
                );
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = cert.certificates()?;
                let key = PrivateKeyDer::from_pem_file(&key.path).with_context(|| {
                    format!(
                        "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                        key.describe()
                    )
                })?;
                builder.with_client_auth_cert(chain, key).with_context(|| {
                    format!(
                        "the client certificate {} and key do not make a pair",
                        cert.describe()
                    )
                })?
            }
        };
        Ok(Arc::new(config))
    }
}

/// A hint after an export failure's own words, when they say what a user fixes: `tls` is
/// whether the endpoint is `https://`, `client_cert` whether one is configured.
pub fn hint(failure: &str, tls: bool, client_cert: bool) -> &'static str {
    if failure.contains("UnknownIssuer") || failure.contains("invalid peer certificate") {
        " (the server's certificate is not signed by a trusted CA: set OTEL_EXPORTER_OTLP_CERTIFICATE to the CA that signed it)"
    } else if failure.contains("CertificateRequired") || failure.contains("certificate required") {
        " (the server requires a client certificate: set OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY)"
    } else if tls && !client_cert && closed_by_peer(failure) {
        // TLS 1.3 servers refuse a missing client certificate after the handshake: over
        // HTTP/2 the client sees only the connection close, or, when its first frames are
        // still being written, a broken pipe or a reset.
        " (the server closed the connection: if it requires a client certificate, set OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY)"
    } else {
        ""
    }
}

/// Whether a failure's words say the peer closed the connection under the client, in the
/// ways hyper, tonic and the OS (`Connection reset by peer`) report it.
fn closed_by_peer(failure: &str) -> bool {
    let failure = failure.to_ascii_lowercase();
    ["connection closed", "broken pipe", "connection reset"]
        .iter()
        .any(|w| failure.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &std::path::Path, name: &str, text: &str, setting: &'static str) -> SettingFile {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        SettingFile { path, setting }
    }

    #[test]
    fn bad_files_are_named_with_their_setting() {
        let dir = std::env::temp_dir().join(format!("kt-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = TlsFiles {
            ca: Some(SettingFile {
                path: dir.join("absent.pem"),
                setting: "OTEL_EXPORTER_OTLP_CERTIFICATE",
            }),
            client: None,
        };
        let e = format!("{:#}", missing.client_config().unwrap_err());
        assert!(
            e.starts_with("reading OTEL_EXPORTER_OTLP_CERTIFICATE ") && e.contains("absent.pem"),
            "{e}"
        );
        let not_pem = TlsFiles {
            ca: Some(file(
                &dir,
                "ca.txt",
                "hello",
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            )),
            client: None,
        };
        let e = format!("{:#}", not_pem.client_config().unwrap_err());
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE") && e.contains("no PEM certificate"),
            "{e}"
        );
        assert_eq!(not_pem.stamp().len(), 1);
        assert!(not_pem.stamp()[0].is_some());
        assert!(missing.stamp()[0].is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failures_get_the_fix_as_a_hint() {
        assert!(
            hint("invalid peer certificate: UnknownIssuer", true, false)
                .contains("OTEL_EXPORTER_OTLP_CERTIFICATE")
        );
        assert!(
            hint("received fatal alert: CertificateRequired", true, true).contains("CLIENT_KEY")
        );
        let closed = "Cancelled: operation was canceled: transport error: connection closed";
        assert!(hint(closed, true, false).contains("if it requires a client certificate"));
        assert_eq!(hint(closed, true, true), "");
        assert_eq!(hint(closed, false, false), "");
        // Seen from tonic when the refusal arrived while its first frames were being written.
        let broken = "transport error: connection error: stream closed because of a broken pipe";
        assert!(hint(broken, true, false).contains("CLIENT_KEY"));
        assert_eq!(hint(broken, true, true), "");
        assert!(
            hint("Connection reset by peer (os error 104)", true, false).contains("CLIENT_KEY")
        );
        assert_eq!(hint("connection refused", true, false), "");
    }
}
