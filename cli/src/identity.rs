//! Restate's request identity: the ed25519 key pair restate-server signs its requests with, and
//! the `publickeyv1_…` form of the public key the handler verifies them against.
//!
//! restate-server reads the private key from the PEM file named by
//! [`PRIVATE_KEY_PEM_ENV`] and then puts a JWT (`x-restate-jwt-v1`, audience = the request's
//! path) on every request to a deployment, discovery included. The handler, given the public
//! key in `FANOUT_IDENTITY_KEYS`, answers anything else with 401.

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::SigningKey;
use fanout_contract::identity;
pub use fanout_contract::identity::{IDENTITY_KEYS_ENV, PUBLIC_KEY_PREFIX};
use std::path::{Path, PathBuf};

/// restate-server's setting: the path of the ed25519 private key (PKCS#8 PEM) it signs with.
pub const PRIVATE_KEY_PEM_ENV: &str =
    "RESTATE_WORKER__INVOKER__REQUEST_IDENTITY_PRIVATE_KEY_PEM_FILE";

/// PKCS#8 v1 (RFC 8410) `PrivateKeyInfo` for Ed25519 up to the 32-byte seed:
/// `SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32) } }`.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// An ed25519 key pair for signing Restate's requests.
pub struct KeyPair {
    signing: SigningKey,
}

impl KeyPair {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| anyhow::anyhow!("cannot get random bytes for a signing key: {e}"))?;
        Ok(Self::from_seed(seed))
    }

    /// The key pair of a 32-byte ed25519 seed (the private key).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The key pair of a PKCS#8 PEM as [`Self::private_key_pem`] (or `openssl genpkey
    /// -algorithm ed25519`) writes it.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let body: String = pem
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("-----"))
            .collect();
        let der = BASE64
            .decode(body)
            .context("the PEM's body is not base64")?;
        match der.strip_prefix(&PKCS8_ED25519_PREFIX[..]) {
            Some(seed) if seed.len() == 32 => {
                Ok(Self::from_seed(seed.try_into().expect("32 bytes")))
            }
            _ => anyhow::bail!("the PEM does not hold a PKCS#8 ed25519 private key"),
        }
    }

    /// The ed25519 signature of `message` (what a JWT's third part carries).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        self.signing.sign(message).to_bytes()
    }

    /// The public key as Restate writes it: `publickeyv1_` + base58 of its 32 bytes. This is
    /// what restate-server prints at startup and what `FANOUT_IDENTITY_KEYS` takes.
    pub fn public_key(&self) -> String {
        format!(
            "{PUBLIC_KEY_PREFIX}{}",
            bs58::encode(self.signing.verifying_key().to_bytes()).into_string()
        )
    }

    /// The private key as a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as
    /// `openssl genpkey -algorithm ed25519` writes it.
    pub fn private_key_pem(&self) -> String {
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&self.signing.to_bytes());
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            BASE64.encode(der)
        )
    }

    /// Writes the private key PEM to `path`, readable by its owner only.
    pub fn write_private_key(&self, path: &Path) -> Result<()> {
        write_private(path, self.private_key_pem().as_bytes())
            .with_context(|| format!("cannot write the signing key to {}", path.display()))
    }
}

/// A key pair written into `dir`: what the local stack gives restate-server and the handler.
pub struct SigningSetup {
    /// For restate-server's [`PRIVATE_KEY_PEM_ENV`].
    pub pem_path: PathBuf,
    /// For the handler's [`IDENTITY_KEYS_ENV`].
    pub public_key: String,
}

impl SigningSetup {
    /// Generates a key pair and writes its private key to `dir/restate-identity.pem`.
    pub fn generate_in(dir: &Path) -> Result<Self> {
        let pair = KeyPair::generate()?;
        let pem_path = dir.join("restate-identity.pem");
        pair.write_private_key(&pem_path)?;
        Ok(Self {
            pem_path,
            public_key: pair.public_key(),
        })
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents)
}

/// Checks a `FANOUT_IDENTITY_KEYS` value the way the handler will at start (and the SDK's
/// verifier does): one or more `publickeyv1_` + base58 of 32 bytes, comma-separated. Returns
/// how many keys it holds.
pub fn check_public_keys(raw: &str) -> Result<usize, String> {
    let keys = identity::key_list(raw)?;
    for (i, key) in keys.iter().enumerate() {
        let why = match key.strip_prefix(PUBLIC_KEY_PREFIX) {
            None => Some(format!("it does not start with {PUBLIC_KEY_PREFIX}")),
            Some(encoded) => match bs58::decode(encoded).into_vec() {
                Err(e) => Some(format!("it is not base58 after the prefix: {e}")),
                Ok(bytes) if bytes.len() != 32 => Some(format!(
                    "it decodes to {} bytes, not the 32 of an ed25519 public key",
                    bytes.len()
                )),
                Ok(_) => None,
            },
        };
        if let Some(why) = why {
            return Err(identity::not_a_key(i, keys.len(), key, &why));
        }
    }
    Ok(keys.len())
}

/// The `publickeyv1_…` key restate-server printed at startup, from its log.
pub fn public_key_in_log(log: &str) -> Option<String> {
    log.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find(|word| word.starts_with(PUBLIC_KEY_PREFIX) && word.len() > PUBLIC_KEY_PREFIX.len())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pem_is_pkcs8_and_the_public_key_is_base58_of_32_bytes() {
        let pair = KeyPair::from_seed([7; 32]);
        let pem = pair.private_key_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = BASE64.decode(body).unwrap();
        assert_eq!(der.len(), 48);
        assert_eq!(&der[..16], &PKCS8_ED25519_PREFIX);
        assert_eq!(&der[16..], &[7; 32]);
        let key = pair.public_key();
        let decoded = bs58::decode(key.strip_prefix(PUBLIC_KEY_PREFIX).unwrap())
            .into_vec()
            .unwrap();
        assert_eq!(decoded, pair.signing.verifying_key().to_bytes());
    }

    #[test]
    fn the_public_key_is_the_one_restate_server_prints_for_the_pem() {
        // restate-server 1.7.12 given this seed's PEM logged
        // `Loaded request identity key kid: "publickeyv1_FP9o…"`.
        let seed = "b06d1c0bef37cb59e85c3f67bcf7d65e7f0e428fb20527fc76d7fcccba15ee82";
        let seed: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&seed[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let pair = KeyPair::from_seed(seed.try_into().unwrap());
        assert_eq!(
            pair.public_key(),
            "publickeyv1_FP9oYi9S8LQyZcUMPv6JZZ5ytHYd9eeDmy1AyjTd7erQ"
        );
    }

    #[test]
    fn a_written_pem_reads_back_and_signs_verifiably() {
        let pair = KeyPair::from_seed([9; 32]);
        let back = KeyPair::from_pem(&pair.private_key_pem()).unwrap();
        assert_eq!(back.public_key(), pair.public_key());
        let signature = ed25519_dalek::Signature::from_bytes(&back.sign(b"hello"));
        pair.signing
            .verifying_key()
            .verify_strict(b"hello", &signature)
            .unwrap();
        assert!(KeyPair::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END").is_err());
    }

    #[test]
    fn generated_keys_differ_and_are_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = SigningSetup::generate_in(dir.path()).unwrap();
        let b = KeyPair::generate().unwrap();
        assert_ne!(a.public_key, b.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&a.pem_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn public_key_lists_are_checked_like_the_handler_does() {
        let a = KeyPair::from_seed([1; 32]).public_key();
        let b = KeyPair::from_seed([2; 32]).public_key();
        assert_eq!(check_public_keys(&a), Ok(1));
        assert_eq!(check_public_keys(&format!("{a}, {b},")), Ok(2));
        let err = |raw: &str| check_public_keys(raw).unwrap_err();
        assert!(err(" , ").contains("holds no key"));
        let prefix = err(&format!("{a},{}", &b[PUBLIC_KEY_PREFIX.len()..]));
        assert!(
            prefix.contains("key 2 of 2") && prefix.contains("does not start"),
            "{prefix}"
        );
        assert!(err("publickeyv1_0OIl").contains("not base58"));
        assert!(err("publickeyv1_abc").contains("not the 32"));
    }

    #[test]
    fn the_key_is_found_in_a_log_line() {
        let line = "\x1b[32mINFO\x1b[0m restate_service_client::request_identity::v1\n  \
                    Loaded request identity key\n    kid: \"publickeyv1_ChjENKeMvCtRnqG2mrBK1HmPKufgFUc98K8B3ononQvp\"\n    \
                    path: /tmp/key.pem\x1b[0m";
        assert_eq!(
            public_key_in_log(line).as_deref(),
            Some("publickeyv1_ChjENKeMvCtRnqG2mrBK1HmPKufgFUc98K8B3ononQvp")
        );
        assert_eq!(public_key_in_log("nothing here"), None);
    }
}
