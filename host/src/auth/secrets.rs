//! Secrets in task input: fields the task type's schema marks `"writeOnly": true`.
//!
//! At creation their values are taken out of the input (which keeps `"***"` in their place)
//! and sealed with ChaCha20-Poly1305 under a key kept in `<data_dir>/secrets.key` (mode 0600).
//! Only a run unseals them, to hand the plugin its real input; whatever the run emits (logs,
//! progress, records, result, error) has every secret value replaced by `"***"`.

use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use serde_json::{Map, Value};

use super::service::secret_file;

/// What masked secrets read as.
pub const MASK: &str = "***";

/// Secrets shorter than this are not redacted from free text (they would mangle it).
const MIN_REDACT_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret key: {0}")]
    Key(String),
    #[error("sealed input cannot be opened (wrong key or corrupt data)")]
    Open,
}

/// Seals and opens secret values.
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl SecretBox {
    pub fn open(data_dir: &Path) -> Result<Self, SecretError> {
        let encoded = secret_file(&data_dir.join("secrets.key"), || {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            base64::engine::general_purpose::STANDARD.encode(key)
        })
        .map_err(|e| SecretError::Key(e.to_string()))?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| SecretError::Key("secrets.key must hold 32 bytes in base64".into()))?;
        Ok(Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    pub fn seal(&self, value: &Value) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let plain = value.to_string();
        // Encryption with a fresh nonce cannot fail for inputs this small.
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plain.as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    pub fn unseal(&self, sealed: &str) -> Result<Value, SecretError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| SecretError::Open)?;
        if bytes.len() < 12 {
            return Err(SecretError::Open);
        }
        let (nonce, cipher_text) = bytes.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), cipher_text)
            .map_err(|_| SecretError::Open)?;
        serde_json::from_slice(&plain).map_err(|_| SecretError::Open)
    }
}

/// JSON pointers of every `writeOnly` property in `schema` (following nested `properties`).
pub fn secret_paths(schema: &Value) -> Vec<String> {
    fn walk(schema: &Value, at: &str, out: &mut Vec<String>) {
        if schema.get("writeOnly").and_then(Value::as_bool) == Some(true) && !at.is_empty() {
            out.push(at.to_owned());
            return;
        }
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                let escaped = name.replace('~', "~0").replace('/', "~1");
                walk(property, &format!("{at}/{escaped}"), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(schema, "", &mut out);
    out
}

/// Takes the secret values out of `input`, leaving `"***"`; returns them by pointer, or
/// `None` when the input holds none.
pub fn seal_secrets(input: &mut Value, paths: &[String]) -> Option<Value> {
    let mut taken = Map::new();
    for path in paths {
        if let Some(slot) = input.pointer_mut(path)
            && !slot.is_null()
        {
            taken.insert(
                path.clone(),
                std::mem::replace(slot, Value::String(MASK.into())),
            );
        }
    }
    (!taken.is_empty()).then_some(Value::Object(taken))
}

/// Puts unsealed secrets back into a masked input.
pub fn unseal_into(input: &mut Value, secrets: &Value) {
    if let Some(secrets) = secrets.as_object() {
        for (path, value) in secrets {
            if let Some(slot) = input.pointer_mut(path) {
                *slot = value.clone();
            }
        }
    }
}

/// The secret strings worth redacting from free text.
pub fn secret_strings(secrets: &Value) -> Vec<String> {
    fn collect(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) if s.len() >= MIN_REDACT_LEN => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            Value::Object(map) => map.values().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    collect(secrets, &mut out);
    // Longest first, so that a secret containing another is masked whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// `text` with every secret replaced by `"***"`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), MASK);
        }
    }
    text
}

/// Redacts every string inside `value` (keys included).
pub fn redact_value(value: &mut Value, secrets: &[String]) {
    if secrets.is_empty() {
        return;
    }
    match value {
        Value::String(s) => *s = redact(s, secrets),
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(v, secrets)),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut item) in entries {
                redact_value(&mut item, secrets);
                map.insert(redact(&key, secrets), item);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn write_only_fields_are_found_masked_sealed_and_restored() {
        let schema = json!({"type": "object", "properties": {
            "api_endpoint": {"type": "string"},
            "credentials": {"type": "object", "properties": {
                "access_token": {"type": "string", "writeOnly": true},
                "refresh_token": {"type": "string", "writeOnly": true},
            }},
        }});
        let paths = secret_paths(&schema);
        assert_eq!(paths.len(), 2);
        let original = json!({"api_endpoint": "https://gitlab", "credentials": {"access_token": "glpat-abcdef123456"}});
        let mut input = original.clone();
        let secrets = seal_secrets(&mut input, &paths).expect("one secret");
        assert_eq!(input["credentials"]["access_token"], MASK);

        let dir = tempfile::tempdir().expect("dir");
        let sealer = SecretBox::open(dir.path()).expect("key");
        let sealed = sealer.seal(&secrets);
        assert!(!sealed.contains("glpat"));
        let opened = SecretBox::open(dir.path())
            .expect("same key")
            .unseal(&sealed)
            .expect("opens");
        unseal_into(&mut input, &opened);
        assert_eq!(input, original);
    }

    #[test]
    fn redaction_masks_secrets_in_text_and_nested_values() {
        let secrets = secret_strings(&json!({"/t": "glpat-abcdef123456", "/short": "ab"}));
        assert_eq!(
            redact("token glpat-abcdef123456 failed", &secrets),
            "token *** failed"
        );
        let mut value = json!({"msg": ["x glpat-abcdef123456"], "glpat-abcdef123456": 1});
        redact_value(&mut value, &secrets);
        assert_eq!(value, json!({"msg": ["x ***"], "***": 1}));
    }

    #[test]
    fn a_tampered_seal_does_not_open() {
        let dir = tempfile::tempdir().expect("dir");
        let sealer = SecretBox::open(dir.path()).expect("key");
        let mut sealed = sealer.seal(&json!({"a": "secret"})).into_bytes();
        sealed[20] ^= 1;
        assert!(sealer.unseal(&String::from_utf8_lossy(&sealed)).is_err());
    }
}
