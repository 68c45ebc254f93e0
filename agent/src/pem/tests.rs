//! Each problem a certificate or key file can have, and the exact words
//! that name it.

use std::path::PathBuf;

use super::*;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

fn certified(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn a_good_certificate_and_its_key_pass_and_come_back_verbatim() {
    let f = Files::new();
    let (cert, key) = certified("controller");
    let (c, k) = (f.write("cert.pem", &cert), f.write("key.pem", &key));
    assert_eq!(certificates("--ca", &c).unwrap(), cert.as_bytes());
    let (cert_bytes, key_bytes) = identity(&c, &k).unwrap();
    assert_eq!(
        (cert_bytes.as_slice(), key_bytes.as_slice()),
        (cert.as_bytes(), key.as_bytes())
    );
}

#[test]
fn a_missing_file_is_named_with_its_flag() {
    let f = Files::new();
    let missing = f.dir.path().join("nope.pem");
    let e = certificates("--ca", &missing).unwrap_err();
    assert_eq!(
        e,
        format!(
            "--ca {}: cannot read it: No such file or directory (os error 2)",
            missing.display()
        )
    );
    let (cert, _) = certified("controller");
    let e = identity(&f.write("cert.pem", cert), &missing).unwrap_err();
    assert!(
        e.starts_with(&format!("--tls-key {}: cannot read it:", missing.display())),
        "{e}"
    );
}

#[test]
fn a_file_that_is_not_pem_or_holds_no_certificate_is_named() {
    let f = Files::new();
    let text = f.write("notes.txt", "just some text\n");
    assert_eq!(
        certificates("--ca", &text).unwrap_err(),
        format!(
            "--ca {}: no certificate in it (expected a PEM block -----BEGIN CERTIFICATE-----)",
            text.display()
        )
    );
    let torn = f.write("torn.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
    let e = certificates("--ca", &torn).unwrap_err();
    assert!(
        e.starts_with(&format!("--ca {}: not a PEM file: ", torn.display())),
        "{e}"
    );
    // Base64 that decodes, but not to a certificate.
    let junk = f.write(
        "junk.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    );
    let e = certificates("--tls-cert", &junk).unwrap_err();
    assert!(
        e.starts_with(&format!(
            "--tls-cert {}: certificate 1 of 1 does not parse: ",
            junk.display()
        )),
        "{e}"
    );
}

#[test]
fn a_key_given_as_the_certificate_or_the_other_way_round_is_named() {
    let f = Files::new();
    let (cert, key) = certified("controller");
    let (c, k) = (f.write("cert.pem", &cert), f.write("key.pem", &key));
    assert_eq!(
        identity(&k, &c).unwrap_err(),
        format!(
            "--tls-cert {}: no certificate in it (expected a PEM block -----BEGIN CERTIFICATE-----)",
            k.display()
        )
    );
    assert_eq!(
        identity(&c, &c).unwrap_err(),
        format!(
            "--tls-key {}: no private key in it (expected a PEM block such as -----BEGIN PRIVATE KEY-----; is this the certificate?)",
            c.display()
        )
    );
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let f = Files::new();
    let (cert, _) = certified("controller");
    let (_, other_key) = certified("someone-else");
    let (c, k) = (f.write("cert.pem", cert), f.write("other-key.pem", other_key));
    assert_eq!(
        identity(&c, &k).unwrap_err(),
        format!(
            "--tls-key {} does not belong to the certificate in --tls-cert {}: their public keys differ",
            k.display(),
            c.display()
        )
    );
}
