//! TLS to PostgreSQL, with `DATABASE_URL`'s `sslmode` and `sslrootcert` read as libpq
//! reads them, so a connection string copied from a managed service's console works as is.
//! <https://www.postgresql.org/docs/15/libpq-ssl.html#LIBPQ-SSL-PROTECTION>
//!
//! | sslmode       | encrypted           | certificate checked                    |
//! |---------------|---------------------|----------------------------------------|
//! | `disable`     | no                  | -                                      |
//! | `prefer` (default) | if the server offers it | no                        |
//! | `require`     | yes                 | no; chain only if `sslrootcert` is given (libpq: as verify-ca) |
//! | `verify-ca`   | yes                 | chain to `sslrootcert`                 |
//! | `verify-full` | yes                 | chain to `sslrootcert` and host name   |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the machine's trust
//! store; without it `verify-ca`/`verify-full` use `~/.postgresql/root.crt` as libpq does.
//! tokio-postgres itself knows only disable/prefer/require and rejects `sslrootcert`, so
//! [`PgTarget::parse`] takes both out of the URL and this module builds the rustls
//! configuration; diesel-async's own connection would use no TLS at all.
//! Unlike libpq, `prefer` does not retry in clear after a failed handshake: a server that
//! offers TLS and then breaks it is a fault worth seeing.

use std::{path::PathBuf, str::FromStr, sync::Arc};

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = TlsConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // libpq's `allow` (clear first, TLS if refused) has no rustls-side meaning beyond
        // `prefer`'s: we read it as `prefer`.
        match s {
            "disable" => Ok(Self::Disable),
            "allow" | "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(TlsConfigError::UnknownSslMode(other.to_owned())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trust store.
    System,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("sslmode {0:?} is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    UnknownSslMode(String),
    #[error("DATABASE_URL is not a valid connection string")]
    Url(#[source] tokio_postgres::Error),
    #[error(
        "sslmode={0} needs a CA: set sslrootcert to a PEM file (or `system`); ~/.postgresql/root.crt does not exist"
    )]
    NoRootCert(&'static str),
    #[error("cannot read sslrootcert {path}")]
    ReadRootCert {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sslrootcert {path} holds no usable CA certificate")]
    BadRootCert { path: String },
    #[error("cannot build the TLS configuration")]
    Rustls(#[from] rustls::Error),
}

/// How to reach PostgreSQL: tokio-postgres' view of the URL plus what it cannot express.
#[derive(Debug, Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    mode: SslMode,
    root_cert: Option<RootCert>,
}

impl PgTarget {
    /// Splits `sslmode` and `sslrootcert` out of a `postgres://` URL (pure: reads no file).
    pub fn parse(url: &str) -> Result<Self, TlsConfigError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = SslMode::Prefer;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => mode = percent_decode(value).parse()?,
                "sslrootcert" => {
                    let value = percent_decode(value);
                    root_cert = Some(if value == "system" {
                        RootCert::System
                    } else {
                        RootCert::File(PathBuf::from(value))
                    });
                }
                _ => kept.push(pair),
            }
        }
        let rebuilt = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&rebuilt).map_err(TlsConfigError::Url)?;
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        Ok(Self {
            config,
            mode,
            root_cert,
        })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// What the certificate check amounts to, as libpq decides it.
    fn check(&self) -> Check {
        match (self.mode, self.root_cert.is_some()) {
            (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, false) => Check::None,
            (SslMode::Require | SslMode::VerifyCa, _) => Check::Chain,
            (SslMode::VerifyFull, _) => Check::ChainAndName,
        }
    }

    /// Where the CA comes from, when one is needed; libpq's default file otherwise.
    fn root_cert(&self) -> Result<RootCert, TlsConfigError> {
        if let Some(root) = &self.root_cert {
            return Ok(root.clone());
        }
        let default = std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
            .filter(|p| p.exists());
        default
            .map(RootCert::File)
            .ok_or(TlsConfigError::NoRootCert(self.mode.as_str()))
    }

    /// The rustls side, reading the CA file now (once per pool, not per connection).
    pub fn connector(&self) -> Result<MakeRustlsConnect, TlsConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let check = self.check();
        let verifier: Arc<dyn ServerCertVerifier> = match check {
            Check::None => Arc::new(AnyCertificate(provider)),
            Check::Chain | Check::ChainAndName => {
                let roots = load_roots(&self.root_cert()?)?;
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                if check == Check::Chain {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                }
            }
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }

    /// One connection, TLS as configured. Wrapped in a context naming the mode, so a failed
    /// handshake reads as what it is ("invalid peer certificate: UnknownIssuer").
    pub async fn connect(
        &self,
        tls: MakeRustlsConnect,
    ) -> Result<AsyncPgConnection, PgConnectError> {
        let (client, connection) =
            self.config
                .connect(tls)
                .await
                .map_err(|source| PgConnectError::Connect {
                    mode: self.mode.as_str(),
                    source,
                })?;
        AsyncPgConnection::try_from_client_and_connection(client, connection)
            .await
            .map_err(PgConnectError::Setup)
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Check {
    None,
    Chain,
    ChainAndName,
}

#[derive(Debug, thiserror::Error)]
pub enum PgConnectError {
    #[error(transparent)]
    Config(#[from] TlsConfigError),
    #[error("cannot connect to PostgreSQL (sslmode={mode})")]
    Connect {
        mode: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot set up the PostgreSQL connection")]
    Setup(#[source] ConnectionError),
}

impl PgConnectError {
    /// Worth retrying: the server may come back. A bad configuration or a certificate
    /// that fails the check will not get better by waiting.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Config(_) => false,
            Self::Setup(_) => true,
            Self::Connect { source, .. } => {
                source.as_db_error().is_none() && !is_tls_failure(source)
            }
        }
    }
}

/// Whether a rustls error (certificate, handshake) is behind `error`. tokio-rustls wraps
/// it in an `io::Error`, whose `source()` skips the wrapped error, hence `get_ref`.
fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        next = e.source();
    }
    false
}

fn load_roots(root: &RootCert) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    match root {
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(TlsConfigError::BadRootCert {
                    path: "system".to_owned(),
                });
            }
        }
        RootCert::File(path) => {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| TlsConfigError::ReadRootCert {
                path: shown.clone(),
                source,
            })?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsConfigError::BadRootCert { path: shown });
            }
        }
    }
    Ok(roots)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `prefer`/`require` without a CA: encrypted, the peer unauthenticated (libpq's meaning),
/// but the handshake signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA; the name in the certificate is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_sslmode_and_sslrootcert_out_of_the_url() {
        let t = PgTarget::parse(
            "postgres://u:p@db.example:5433/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=f",
        )
        .expect("parses");
        assert_eq!(t.mode(), SslMode::VerifyFull);
        assert_eq!(t.root_cert, Some(RootCert::File("/etc/ca.pem".into())));
        assert_eq!(t.config.get_application_name(), Some("f"));
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(t.check(), Check::ChainAndName);
    }

    #[test]
    fn defaults_to_prefer_without_a_certificate_check() {
        let t = PgTarget::parse("postgres://postgres@127.0.0.1/postgres").expect("parses");
        assert_eq!(t.mode(), SslMode::Prefer);
        assert_eq!(t.check(), Check::None);
    }

    #[test]
    fn require_with_a_root_cert_checks_the_chain_as_libpq_does() {
        let t =
            PgTarget::parse("postgres://h/db?sslmode=require&sslrootcert=system").expect("parses");
        assert_eq!(t.root_cert, Some(RootCert::System));
        assert_eq!(t.check(), Check::Chain);
        let plain = PgTarget::parse("postgres://h/db?sslmode=require").expect("parses");
        assert_eq!(plain.check(), Check::None);
    }

    #[test]
    fn rejects_an_unknown_sslmode() {
        let err = PgTarget::parse("postgres://h/db?sslmode=always").expect_err("rejected");
        assert!(matches!(err, TlsConfigError::UnknownSslMode(m) if m == "always"));
    }

    #[test]
    fn a_missing_ca_file_is_named_in_the_error() {
        let t = PgTarget::parse("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca")
            .expect("parses");
        let err = t.connector().err().expect("fails");
        assert!(err.to_string().contains("/nonexistent/ca"), "{err}");
    }
}
