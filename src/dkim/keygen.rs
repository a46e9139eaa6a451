//! `tern dkim keygen DOMAIN SELECTOR [--ed25519] [--dir D]`: writes a new
//! private key to `D/DOMAIN.SELECTOR.key` (mode 0600, never over an
//! existing file) and prints the DNS TXT record and the `dkim_keys` line.
//!
//! Ed25519 keys come from ring. ring cannot generate RSA keys, so RSA 2048
//! (the default, because not every verifier knows Ed25519 yet) runs
//! `openssl genpkey` as a tool; the daemon never runs it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::SigningKey;
use crate::cli::{EX_CANTCREAT, EX_OK, EX_UNAVAILABLE, EX_USAGE};

const USAGE: &str = "usage: tern dkim keygen DOMAIN SELECTOR [--ed25519] [--dir DIR]";
/// RSA key size for new keys.
pub const RSA_BITS: u32 = 2048;

/// `tern dkim ...`.
pub fn main(args: &[String]) -> i32 {
    let Some((sub, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return EX_USAGE;
    };
    if sub != "keygen" {
        eprintln!("{USAGE}");
        return EX_USAGE;
    }
    let mut positional = Vec::new();
    let mut ed25519 = false;
    let mut dir = PathBuf::from(".");
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ed25519" => ed25519 = true,
            "--dir" => match it.next() {
                Some(d) => dir = PathBuf::from(d),
                None => {
                    eprintln!("{USAGE}");
                    return EX_USAGE;
                }
            },
            _ if a.starts_with('-') => {
                eprintln!("tern: dkim keygen: unknown option {a}\n{USAGE}");
                return EX_USAGE;
            }
            _ => positional.push(a.as_str()),
        }
    }
    let [domain, selector] = positional.as_slice() else {
        eprintln!("{USAGE}");
        return EX_USAGE;
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !super::is_domain(&domain) || !super::is_selector(selector) {
        eprintln!("tern: dkim keygen: bad domain or selector\n{USAGE}");
        return EX_USAGE;
    }
    let pem = match if ed25519 { ed25519_pem() } else { rsa_pem() } {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tern: dkim keygen: {e}");
            return EX_UNAVAILABLE;
        }
    };
    let key = match SigningKey::parse(pem.as_bytes()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("tern: dkim keygen: the new key does not load: {e}");
            return EX_UNAVAILABLE;
        }
    };
    let path = dir.join(format!("{domain}.{selector}.key"));
    if let Err(e) = write_private(&path, pem.as_bytes()) {
        eprintln!("tern: dkim keygen: {}: {e}", path.display());
        return EX_CANTCREAT;
    }
    eprintln!("wrote {}", path.display());
    eprintln!("dkim_keys line: {domain} {selector} {}", path.display());
    println!("{}", txt_record(&domain, selector, &key.dns_record()));
    EX_OK
}

/// `SELECTOR._domainkey.DOMAIN IN TXT "..."`, split into strings of at
/// most 255 octets (RFC 1035 character-strings).
pub fn txt_record(domain: &str, selector: &str, value: &str) -> String {
    let parts: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{selector}._domainkey.{domain} IN TXT {}", parts.join(" "))
}

fn ed25519_pem() -> Result<String, String> {
    let rng = ring::rand::SystemRandom::new();
    let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| "cannot generate an Ed25519 key".to_string())?;
    Ok(pem("PRIVATE KEY", doc.as_ref()))
}

fn rsa_pem() -> Result<String, String> {
    let out = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
        .arg(format!("rsa_keygen_bits:{RSA_BITS}"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("RSA keys need the openssl tool ({e}); or use --ed25519"))?;
    if !out.status.success() {
        return Err(format!("openssl genpkey failed ({})", out.status));
    }
    String::from_utf8(out.stdout).map_err(|_| "openssl wrote no PEM".to_string())
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = crate::auth::base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_record_splits_long_values() {
        let v = "x".repeat(300);
        let r = txt_record("example.com", "s1", &v);
        assert!(r.starts_with("s1._domainkey.example.com IN TXT \"xxx"));
        assert!(r.contains(&format!("\"{}\" \"{}\"", "x".repeat(255), "x".repeat(45))));
    }

    #[test]
    fn ed25519_pem_round_trips() {
        let p = ed25519_pem().unwrap();
        assert!(p.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(
            SigningKey::parse(p.as_bytes()).unwrap().algorithm(),
            "ed25519-sha256"
        );
    }
}
