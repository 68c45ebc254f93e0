//! Certificate and key files, checked when a binary starts: a file that
//! cannot be read, is not PEM, holds no certificate, or holds a key that
//! does not belong to its certificate is named, with the flag that gave
//! it, before anything else starts, rather than surfacing as a TLS error
//! once agents dial in. The controller uses these too (it links this
//! library).

use std::path::Path;

use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Reads the PEM certificates in `path` (given with `flag`, such as
/// `--ca`): readable, PEM, at least one certificate, each of them X.509
/// that parses. Returns the file's bytes.
pub fn certificates(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let bytes = read(flag, path)?;
    parse_certificates(flag, path, &bytes)?;
    Ok(bytes)
}

/// Reads a PEM certificate chain (`--tls-cert`) and its private key
/// (`--tls-key`), and checks that the key belongs to the chain's first
/// certificate where the key's type lets that be checked. Returns both
/// files' bytes.
pub fn identity(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    let cert_bytes = read("--tls-cert", cert)?;
    let chain = parse_certificates("--tls-cert", cert, &cert_bytes)?;
    let key_bytes = read("--tls-key", key)?;
    let named = |what: &str| format!("--tls-key {}: {what}", key.display());
    let private = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => named(
            "no private key in it (expected a PEM block such as -----BEGIN PRIVATE KEY-----; is this the certificate?)",
        ),
        e => named(&format!("not a PEM file: {e}")),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain, private, &provider) {
        Ok(_) => Ok((cert_bytes, key_bytes)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(format!(
            "--tls-key {} does not belong to the certificate in --tls-cert {}: their public keys differ",
            key.display(),
            cert.display()
        )),
        Err(e) => Err(named(&format!("not a usable private key: {e}"))),
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    crate::file::read(path, crate::file::MAX_PEM_BYTES)
        .map_err(|e| format!("{flag} {}: cannot read it: {e}", path.display()))
}

fn parse_certificates(flag: &str, path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let named = |what: String| format!("{flag} {}: {what}", path.display());
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| named(format!("not a PEM file: {e}")))?;
    if chain.is_empty() {
        return Err(named(
            "no certificate in it (expected a PEM block -----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    for (i, der) in chain.iter().enumerate() {
        rustls::server::ParsedCertificate::try_from(der)
            .map_err(|e| named(format!("certificate {} of {} does not parse: {e}", i + 1, chain.len())))?;
    }
    Ok(chain)
}

#[cfg(test)]
mod tests;
