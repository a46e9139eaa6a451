//! DKIM signing of mail that leaves the host (RFC 6376; Ed25519 per
//! RFC 8463), on ring, with tern's own canonicalization.
//!
//! - `dkim_keys` names a file of `DOMAIN SELECTOR KEYFILE` lines
//!   ([`DkimKeys`]); a message whose `From:` domain (the first address of
//!   the last `From:`, exact match, case-insensitive) has a key is signed
//!   when it goes out by SMTP (smarthost, route relay, MX). Local delivery
//!   and LMTP are not signed.
//! - Keys: RSA (2048 to 4096 bits; PKCS#8 `BEGIN PRIVATE KEY` or PKCS#1
//!   `BEGIN RSA PRIVATE KEY`, PEM or DER) signs `rsa-sha256`; Ed25519
//!   (PKCS#8, v1 as OpenSSL writes it or v2 as ring does) signs
//!   `ed25519-sha256`.
//! - Always `c=relaxed/relaxed` ([`canon`]); `h=` lists the fields of
//!   [`sign::SIGNED_FIELDS`] present, `From` once more (oversigned);
//!   `t=` unless the clock is before the build date; no `l=`, no `x=`.
//!
//! When: the outbound driver streams the spool file through a
//! [`sign::MessageSigner`] a bounded chunk per loop turn before the job
//! gets a connection slot, at each attempt (`daemon::signing`). Signing at
//! delivery and not at receipt, because what is signed must be what is
//! sent: sender rewriting and the 7-bit downgrade change the message after
//! it is stored, and the downgrade is decided only after the next hop's
//! EHLO, so both variants are hashed and the client picks one.
//!
//! Not supported: signing with more than one key per message, `l=`,
//! `z=`, `i=`, parent-domain key fallback, `tern test` messages.

pub mod canon;
pub mod keygen;
pub mod sign;

use std::path::Path;
use std::rc::Rc;

use ring::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair};

/// Longest `dkim_keys` file.
pub const MAX_KEYS_FILE: u64 = 64 * 1024;
/// Longest key file.
pub const MAX_KEY_FILE: u64 = 16 * 1024;

/// A private key that signs.
pub enum SigningKey {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.algorithm())
    }
}

impl SigningKey {
    /// The `a=` value.
    pub fn algorithm(&self) -> &'static str {
        match self {
            SigningKey::Rsa(_) => "rsa-sha256",
            SigningKey::Ed25519(_) => "ed25519-sha256",
        }
    }

    /// Signs the header hash input (`rsa-sha256`: PKCS#1 v1.5 over its
    /// SHA-256; `ed25519-sha256`: PureEdDSA over its SHA-256, RFC 8463 §3).
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            SigningKey::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                let rng = ring::rand::SystemRandom::new();
                k.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, data, &mut sig)
                    .map_err(|_| "RSA signing failed".to_string())?;
                Ok(sig)
            }
            SigningKey::Ed25519(k) => {
                let hash = ring::digest::digest(&ring::digest::SHA256, data);
                Ok(k.sign(hash.as_ref()).as_ref().to_vec())
            }
        }
    }

    /// The DNS TXT record's value: `v=DKIM1; k=...; p=...`.
    pub fn dns_record(&self) -> String {
        let (k, p) = match self {
            SigningKey::Rsa(k) => ("rsa", rsa_spki(k.public().as_ref())),
            SigningKey::Ed25519(k) => ("ed25519", k.public_key().as_ref().to_vec()),
        };
        format!("v=DKIM1; k={k}; p={}", crate::auth::base64_encode(&p))
    }

    /// Parses a key file's octets: PEM (`PRIVATE KEY`, `RSA PRIVATE KEY`)
    /// or DER.
    pub fn parse(bytes: &[u8]) -> Result<SigningKey, String> {
        let (label, der) = match pem_block(bytes) {
            Some((label, der)) => (Some(label), der),
            None if bytes.starts_with(b"-----") => return Err("bad PEM".into()),
            None => (None, bytes.to_vec()),
        };
        match label.as_deref() {
            Some("RSA PRIVATE KEY") => RsaKeyPair::from_der(&der)
                .map(SigningKey::Rsa)
                .map_err(|e| format!("not a usable RSA key: {e}")),
            Some("PRIVATE KEY") | None => {
                if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
                    return Ok(SigningKey::Ed25519(k));
                }
                match RsaKeyPair::from_pkcs8(&der) {
                    Ok(k) => Ok(SigningKey::Rsa(k)),
                    Err(e) if label.is_some() => {
                        Err(format!("not an Ed25519 or usable RSA key: {e}"))
                    }
                    Err(_) => RsaKeyPair::from_der(&der)
                        .map(SigningKey::Rsa)
                        .map_err(|e| format!("not an Ed25519 or usable RSA key: {e}")),
                }
            }
            Some(other) => Err(format!("PEM {other:?} is not a private key")),
        }
    }

    pub fn load(path: &Path) -> Result<SigningKey, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let bytes = crate::system::read_bounded(file, MAX_KEY_FILE).map_err(|e| e.to_string())?;
        SigningKey::parse(&bytes)
    }
}

/// The first PEM block: its label and decoded octets.
fn pem_block(bytes: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines().map(str::trim);
    let label = lines
        .find_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))?
        .to_string();
    let end = format!("-----END {label}-----");
    let mut b64 = String::new();
    for line in lines.by_ref() {
        if line == end {
            return Some((label, crate::auth::base64_decode(&b64)?));
        }
        if line.contains(':') {
            // RFC 1421 headers (an encrypted key): not supported.
            return None;
        }
        b64.push_str(line);
    }
    None
}

/// A DER length.
fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        let used = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | used.len() as u8);
        out.extend_from_slice(used);
    }
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// SubjectPublicKeyInfo around an RSAPublicKey (what DKIM records carry).
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    // SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }
    const RSA_ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8];
    bits.extend_from_slice(rsa_public_key);
    let mut content = RSA_ALGORITHM.to_vec();
    content.extend(der(0x03, &bits));
    der(0x30, &content)
}

/// One `dkim_keys` line.
#[derive(Debug)]
struct Entry {
    domain: String,
    selector: String,
    key: SigningKey,
}

/// The `dkim_keys` table: one key per domain (the first line wins).
#[derive(Debug, Default)]
pub struct DkimKeys {
    entries: Vec<Entry>,
}

/// Shared by the outbound driver's signing jobs.
pub type KeyMap = Rc<DkimKeys>;

/// A bad line of the file.
#[derive(Debug, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn is_selector(s: &str) -> bool {
    // Selectors are dot-separated sub-domains too (RFC 6376 §3.1).
    is_domain(s) && !s.contains("_domainkey")
}

impl DkimKeys {
    /// The selector and key for a (lower-case) domain.
    pub fn key_for(&self, domain: &str) -> Option<(&str, &SigningKey)> {
        self.entries
            .iter()
            .find(|e| e.domain.eq_ignore_ascii_case(domain))
            .map(|e| (e.selector.as_str(), &e.key))
    }

    /// A table of one key (tests, fuzzing).
    pub fn single(domain: &str, selector: &str, key: SigningKey) -> DkimKeys {
        DkimKeys {
            entries: vec![Entry {
                domain: domain.to_ascii_lowercase(),
                selector: selector.to_string(),
                key,
            }],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Parses the file's text; `load_key` reads a KEYFILE (relative names
    /// are relative to the file's directory, resolved by the caller).
    pub fn parse(
        text: &str,
        load_key: &mut dyn FnMut(&str) -> Result<SigningKey, String>,
    ) -> (DkimKeys, Vec<LineError>) {
        let mut keys = DkimKeys::default();
        let mut errors = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut err = |message: String| {
                errors.push(LineError {
                    line: line_no,
                    message,
                })
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            let [domain, selector, file] = words.as_slice() else {
                err("expected DOMAIN SELECTOR KEYFILE".into());
                continue;
            };
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            if !is_domain(&domain) {
                err(format!("{domain:?} is not a domain name"));
                continue;
            }
            if !is_selector(selector) {
                err(format!("{selector:?} is not a selector"));
                continue;
            }
            if keys.key_for(&domain).is_some() {
                err(format!("{domain} has a key already"));
                continue;
            }
            match load_key(file) {
                Ok(key) => keys.entries.push(Entry {
                    domain,
                    selector: selector.to_ascii_lowercase(),
                    key,
                }),
                Err(e) => err(format!("{file}: {e}")),
            }
        }
        (keys, errors)
    }

    /// Reads `dkim_keys` (none configured: an empty table); the problems
    /// name the file and line.
    pub fn load(path: Option<&Path>) -> (DkimKeys, Vec<String>) {
        let Some(path) = path else {
            return (DkimKeys::default(), Vec::new());
        };
        let text = std::fs::File::open(path)
            .and_then(|f| crate::system::read_bounded(f, MAX_KEYS_FILE))
            .and_then(|b| {
                String::from_utf8(b)
                    .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
            });
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                return (
                    DkimKeys::default(),
                    vec![format!("dkim_keys {}: {e}", path.display())],
                )
            }
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let (keys, errors) = DkimKeys::parse(&text, &mut |file| SigningKey::load(&dir.join(file)));
        let problems = errors
            .into_iter()
            .map(|e| format!("{}:{}: {}", path.display(), e.line, e.message))
            .collect();
        (keys, problems)
    }

    pub fn load_logged(path: Option<&Path>) -> KeyMap {
        let (keys, problems) = DkimKeys::load(path);
        for p in problems {
            log::error!("{p}");
        }
        Rc::new(keys)
    }
}

/// For `check-config` and start-up.
pub fn startup_problems(cfg: &crate::config::Config) -> Vec<String> {
    DkimKeys::load(cfg.dkim_keys.as_deref()).1
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn ed25519() -> SigningKey {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        SigningKey::parse(doc.as_ref()).unwrap()
    }

    #[test]
    fn table_lines_comments_and_errors() {
        let text = "# keys\n\nexample.com  s1 a.key\nExample.org. s2 b.key # c\nbad\n\
                    x_y.com s c\nexample.com s3 c.key\nexample.net s missing.key\n";
        let mut asked = Vec::new();
        let (keys, errors) = DkimKeys::parse(text, &mut |f| {
            asked.push(f.to_string());
            if f == "missing.key" {
                Err("No such file".into())
            } else {
                Ok(ed25519())
            }
        });
        assert_eq!(asked, ["a.key", "b.key", "missing.key"]);
        assert_eq!(keys.key_for("example.com").unwrap().0, "s1");
        assert_eq!(keys.key_for("example.org").unwrap().0, "s2");
        assert!(keys.key_for("example.net").is_none());
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [5, 6, 7, 8]);
        assert!(errors[3].message.contains("missing.key: No such file"));
    }

    #[test]
    fn ed25519_record_is_the_raw_public_key() {
        let key = ed25519();
        let rec = key.dns_record();
        let p = rec.strip_prefix("v=DKIM1; k=ed25519; p=").unwrap();
        assert_eq!(crate::auth::base64_decode(p).unwrap().len(), 32);
        assert_eq!(key.sign(b"x").unwrap().len(), 64);
    }

    #[test]
    fn pem_and_garbage() {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            crate::auth::base64_encode(doc.as_ref())
        );
        assert_eq!(
            SigningKey::parse(pem.as_bytes()).unwrap().algorithm(),
            "ed25519-sha256"
        );
        assert!(SigningKey::parse(b"garbage").is_err());
        assert!(SigningKey::parse(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }

    #[test]
    fn der_lengths() {
        let mut v = Vec::new();
        der_len(5, &mut v);
        der_len(0x80, &mut v);
        der_len(270, &mut v);
        assert_eq!(v, [5, 0x81, 0x80, 0x82, 0x01, 0x0e]);
    }
}
