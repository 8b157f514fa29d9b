//! Callback signatures (R-CB-3), computed at each attempt: the reference product's
//! `t` / `sign` body fields, and the Standard Webhooks headers
//! (https://www.standardwebhooks.com: `webhook-id`, `webhook-timestamp`,
//! `webhook-signature`).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Digest as _;
use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("must start with `whsec_` (the Standard Webhooks secret format)")]
    Prefix,
    #[error("the part after `whsec_` is not base64: {0}")]
    Base64(String),
    #[error("the part after `whsec_` decodes to no bytes")]
    Empty,
}

/// The HMAC key of a `whsec_…` secret: the base64 after the prefix.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, SecretError> {
    let b64 = secret.strip_prefix("whsec_").ok_or(SecretError::Prefix)?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| SecretError::Base64(e.to_string()))?;
    if key.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(key)
}

/// `md5(key + t)` in lowercase hex, as the reference product signs its callbacks.
pub fn md5_sign(key: &str, t: u64) -> String {
    md5_hex(&[key, &t.to_string()])
}

/// The md5 of the concatenated `parts`, lowercase hex (the reference product's
/// signatures: callbacks' `sign`, push URLs' `txSecret`).
pub fn md5_hex(parts: &[&str]) -> String {
    let mut h = md5::Md5::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// The body as sent: the stored event plus, with a key, `t` (expiry, unix seconds) and
/// `sign`.
pub fn body(stored: &Value, key: &str, now_s: u64, sign_ttl: u64) -> Vec<u8> {
    let mut v = stored.clone();
    if let (false, Some(obj)) = (key.is_empty(), v.as_object_mut()) {
        let t = now_s.saturating_add(sign_ttl);
        obj.insert("t".into(), Value::from(t));
        obj.insert("sign".into(), Value::from(md5_sign(key, t)));
    }
    // Plain JSON values always serialize.
    serde_json::to_vec(&v).unwrap_or_default()
}

/// `webhook-signature`'s value: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`.
pub fn webhook_signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length; the error arm cannot happen.
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(sig)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_must_be_whsec_base64() {
        assert_eq!(secret_key("abc"), Err(SecretError::Prefix));
        assert!(matches!(
            secret_key("whsec_!!"),
            Err(SecretError::Base64(_))
        ));
        assert_eq!(secret_key("whsec_"), Err(SecretError::Empty));
        assert_eq!(secret_key("whsec_AQID").unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn the_body_gets_t_and_sign_only_with_a_key() {
        let stored = serde_json::json!({"event_type": 100});
        let plain: Value = serde_json::from_slice(&body(&stored, "", 10, 600)).unwrap();
        assert_eq!(plain, stored);
        let signed: Value = serde_json::from_slice(&body(&stored, "k", 10, 600)).unwrap();
        assert_eq!(signed["t"], 610);
        assert_eq!(signed["sign"], md5_sign("k", 610).as_str());
        // Known answer, from `printf k610 | md5sum`.
        assert_eq!(md5_sign("k", 610), "a4d364c5f9b315c8a96b27243f42bc87");
    }
}
