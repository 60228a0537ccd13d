//! Tokens at rest: AES-256-GCM with a random nonce per ciphertext; the associated data binds each ciphertext
//! to its grant (user id), token version and kind, so a ciphertext copied into another row fails to decrypt.
//! Keys come from `ASTRA_WORKER_TOKEN_KEY` (32 random bytes, base64; also `…_FILE` or the credentials
//! directory) and, while rotating, the old ones from `ASTRA_WORKER_TOKEN_KEY_PREVIOUS` (comma-separated).
//! Each ciphertext is stored with the id of its key.

use aes_gcm::{
    Aes256Gcm, KeyInit,
    aead::{Aead, Payload},
};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::{failure::Failure, secrets};

const NONCE_LEN: usize = 12;

/// Which token of a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Access,
    Refresh,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Access => "access",
            TokenKind::Refresh => "refresh",
        }
    }
}

struct TokenKey {
    id: String,
    cipher: Aes256Gcm,
}

/// The current key and, during a rotation, the previous ones. `Debug` shows key ids only.
pub struct Keyring {
    current: TokenKey,
    previous: Vec<TokenKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prev: Vec<&str> = self.previous.iter().map(|k| k.id.as_str()).collect();
        write!(f, "Keyring(current {}, previous {prev:?})", self.current.id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "the tokens of grant {user_id} were encrypted with key {key_id}, which is neither ASTRA_WORKER_TOKEN_KEY nor in ASTRA_WORKER_TOKEN_KEY_PREVIOUS"
    )]
    UnknownKey { user_id: String, key_id: String },
    #[error(
        "cannot decrypt the {kind} token of grant {user_id} (version {version}): the key is wrong or the ciphertext belongs to another grant"
    )]
    Undecryptable { user_id: String, version: i64, kind: &'static str },
}

impl crate::failure::Classify for CryptoError {
    fn status(&self) -> crate::failure::Status {
        crate::failure::Status::Config
    }
}

fn parse_key(name: &str, b64: &str) -> anyhow::Result<TokenKey> {
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|_| {
        Failure::Config(format!("{name} is not valid base64 (expected 32 random bytes, base64-encoded)"))
    })?;
    if raw.len() != 32 {
        return Err(Failure::config(format!(
            "{name} must be 32 random bytes, base64-encoded (got {} bytes); make one with `openssl rand -base64 32`",
            raw.len()
        )));
    }
    let digest = Sha256::digest([b"astra-worker key id:".as_slice(), &raw].concat());
    let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let cipher = Aes256Gcm::new_from_slice(&raw).map_err(|_| Failure::config(format!("{name}: unusable key")))?;
    Ok(TokenKey { id, cipher })
}

fn aad(user_id: &str, version: i64, kind: TokenKind) -> Vec<u8> {
    format!("astra-worker/v1|{user_id}|{version}|{}", kind.as_str()).into_bytes()
}

impl Keyring {
    /// From the environment (or files); a missing or malformed key is a configuration failure.
    pub fn from_env() -> anyhow::Result<Keyring> {
        let current = secrets::require("ASTRA_WORKER_TOKEN_KEY")?;
        let previous = secrets::read("ASTRA_WORKER_TOKEN_KEY_PREVIOUS")?;
        let prev: Vec<&str> = previous
            .as_ref()
            .map(|p| p.expose_secret().split([',', ' ', '\n']).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Keyring::from_base64(current.expose_secret(), &prev)
    }

    pub fn from_base64(current: &str, previous: &[&str]) -> anyhow::Result<Keyring> {
        let current = parse_key("ASTRA_WORKER_TOKEN_KEY", current)?;
        let previous = previous
            .iter()
            .map(|p| parse_key("ASTRA_WORKER_TOKEN_KEY_PREVIOUS", p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Keyring { current, previous })
    }

    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Whether `key_id` is the current key or one of the previous ones.
    pub fn holds(&self, key_id: &str) -> bool {
        std::iter::once(&self.current).chain(&self.previous).any(|k| k.id == key_id)
    }

    /// Encrypts under the current key: `nonce || ciphertext+tag`.
    pub fn seal(&self, user_id: &str, version: i64, kind: TokenKind, token: &SecretString) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = aad(user_id, version, kind);
        let ct = self
            .current
            .cipher
            .encrypt(&nonce.into(), Payload { msg: token.expose_secret().as_bytes(), aad: &aad })
            .expect("AES-GCM encryption of a short token cannot fail");
        [nonce.as_slice(), &ct].concat()
    }

    /// Decrypts a ciphertext sealed for this grant, version and kind, under the key `key_id`.
    pub fn open(
        &self,
        key_id: &str,
        user_id: &str,
        version: i64,
        kind: TokenKind,
        sealed: &[u8],
    ) -> Result<SecretString, CryptoError> {
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey { user_id: user_id.into(), key_id: key_id.into() })?;
        let bad = || CryptoError::Undecryptable { user_id: user_id.into(), version, kind: kind.as_str() };
        if sealed.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| bad())?;
        let aad = aad(user_id, version, kind);
        let plain = key.cipher.decrypt(&nonce.into(), Payload { msg: ct, aad: &aad }).map_err(|_| bad())?;
        String::from_utf8(plain).map(SecretString::from).map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn key(b: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([b; 32])
    }

    #[test]
    fn a_token_round_trips_and_the_ciphertext_hides_it() {
        let k = Keyring::from_base64(&key(1), &[]).unwrap();
        let t = SecretString::from("rt_supersecret");
        let sealed = k.seal("u1", 3, TokenKind::Refresh, &t);
        assert!(!sealed.windows(5).any(|w| w == b"super"));
        let back = k.open(k.current_id(), "u1", 3, TokenKind::Refresh, &sealed).unwrap();
        assert_eq!(back.expose_secret(), "rt_supersecret");
    }

    #[test]
    fn a_ciphertext_moved_to_another_grant_version_or_kind_fails_clearly() {
        let k = Keyring::from_base64(&key(1), &[]).unwrap();
        let sealed = k.seal("u1", 3, TokenKind::Refresh, &SecretString::from("rt_x"));
        let id = k.current_id().to_string();
        for (user, version, kind) in
            [("u2", 3, TokenKind::Refresh), ("u1", 4, TokenKind::Refresh), ("u1", 3, TokenKind::Access)]
        {
            let e = k.open(&id, user, version, kind, &sealed).unwrap_err();
            assert!(e.to_string().contains("belongs to another grant"), "{e}");
        }
    }

    #[test]
    fn a_wrong_key_or_a_wrong_length_is_a_clear_error() {
        let k1 = Keyring::from_base64(&key(1), &[]).unwrap();
        let sealed = k1.seal("u1", 1, TokenKind::Access, &SecretString::from("at_x"));
        let k2 = Keyring::from_base64(&key(2), &[]).unwrap();
        let e = k2.open(k1.current_id(), "u1", 1, TokenKind::Access, &sealed).unwrap_err();
        assert!(matches!(e, CryptoError::UnknownKey { .. }), "{e}");
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        let e = Keyring::from_base64(&short, &[]).unwrap_err();
        assert!(format!("{e}").contains("32 random bytes") && format!("{e}").contains("16 bytes"), "{e}");
        assert!(Keyring::from_base64("not base64!", &[]).is_err());
    }

    #[test]
    fn previous_keys_still_open_old_ciphertexts() {
        let old = Keyring::from_base64(&key(1), &[]).unwrap();
        let sealed = old.seal("u1", 1, TokenKind::Access, &SecretString::from("at_x"));
        let rotated = Keyring::from_base64(&key(2), &[&key(1)]).unwrap();
        assert_ne!(rotated.current_id(), old.current_id());
        let t = rotated.open(old.current_id(), "u1", 1, TokenKind::Access, &sealed).unwrap();
        assert_eq!(t.expose_secret(), "at_x");
        assert!(!format!("{rotated:?}").contains(&key(2)));
    }
}
