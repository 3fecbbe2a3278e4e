//! TLS trust for `--ca-cert`, and certificate errors in words.
//!
//! `--ca-cert FILE` adds its certificates to the platform's trust. One case needs more: a
//! server's own self-signed certificate, made the usual way (`openssl req -x509`), is marked as
//! a CA, and WebPKI refuses a CA certificate as a server's (`CaUsedAsEndEntity`). curl and
//! wget2 accept it when it is the very certificate given; so does haul: a server that presents
//! exactly a certificate of the file is trusted when the certificate names the host, and the
//! handshake's signatures are still checked with its key. Anything else goes to the platform
//! verifier with the file's certificates as extra roots.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::error::Error;

/// The platform's verifier, plus exact trust in the certificates given.
#[derive(Debug)]
struct PinnedOrPlatform {
    pinned: Vec<CertificateDer<'static>>,
    platform: rustls_platform_verifier::Verifier,
}

impl ServerCertVerifier for PinnedOrPlatform {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        self.platform
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.platform.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.platform.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.platform.supported_verify_schemes()
    }
}

/// A rustls client configuration trusting the platform's authorities, the certificates of
/// `pem` as extra authorities, and each of them exactly as a server's own certificate.
pub(crate) fn client_config(pem: &[u8], shown: &str) -> Result<rustls::ClientConfig, Error> {
    use rustls::pki_types::pem::PemObject as _;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Url(format!("{shown} is not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Url(format!("{shown} holds no PEM certificate")));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let platform = rustls_platform_verifier::Verifier::new_with_extra_roots(certs.clone(), Arc::clone(&provider))
        .map_err(|e| Error::Url(format!("{shown}: {e}")))?;
    let verifier = PinnedOrPlatform {
        pinned: certs,
        platform,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider as Arc<CryptoProvider>)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Url(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A rustls client configuration for a PostgreSQL server: the platform's authorities, plus the
/// certificates of `pem` (the URL's `sslrootcert`) as for `--ca-cert`; ALPN `postgresql`.
#[cfg(feature = "queue")]
pub(crate) fn database_config(pem: Option<(&[u8], &str)>) -> Result<rustls::ClientConfig, Error> {
    let mut config = match pem {
        Some((pem, shown)) => client_config(pem, shown)?,
        None => {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let verifier = rustls_platform_verifier::Verifier::new(Arc::clone(&provider))
                .map_err(|e| Error::Url(format!("the platform's certificates: {e}")))?;
            rustls::ClientConfig::builder_with_provider(provider as Arc<CryptoProvider>)
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::Url(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// A certificate error in words, with what to do, if `cause` is one.
pub(crate) fn explain(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    // The TLS layers wrap it in io::Errors (two deep), whose source() skips the inner error:
    // look inside each.
    let mut current: &(dyn std::error::Error + 'static) = cause;
    let error = loop {
        if let Some(error) = current.downcast_ref::<rustls::Error>() {
            break error;
        }
        let inner = current.downcast_ref::<std::io::Error>()?.get_ref()?;
        current = inner;
    };
    let rustls::Error::InvalidCertificate(problem) = error else {
        return None;
    };
    let hint = "pass --ca-cert FILE with the authority's certificate (or the server's own)";
    Some(match problem {
        CertificateError::UnknownIssuer => {
            format!("the server's certificate is not signed by a trusted authority; {hint}")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet (is this machine's clock right?)".to_owned()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "the server's certificate is for another name than the URL's host".to_owned()
        }
        CertificateError::Revoked => "the server's certificate was revoked".to_owned(),
        CertificateError::BadSignature => "the server's certificate has a bad signature".to_owned(),
        other if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            "the server presents a certificate authority's certificate as its own (a self-signed \
             certificate made with `openssl req -x509`?); pass that very certificate with --ca-cert to trust it"
                .to_owned()
        }
        _ => format!("the server's certificate was refused ({error}); {hint}"),
    })
}
