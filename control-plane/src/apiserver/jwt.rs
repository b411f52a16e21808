//! Compact JSON Web Signatures (RFC 7515) with ES256 (RFC 7518 §3.4: ECDSA P-256 over
//! SHA-256, the signature as the fixed 64-byte `r || s`): signing a JSON claims object into
//! `header.payload.signature`, verifying one back into its claims, and the JSON Web Key
//! (RFC 7517) that publishes the public half.
//!
//! Owns the token format and its cryptography only; it must not judge claims (issuer,
//! audience, expiry, who the subject is): [`super::serviceaccount_token`] does.
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey},
};
use serde::Deserialize;
use serde_json::{json, Value};

/// The only algorithm corten signs and accepts.
pub const ALGORITHM: &str = "ES256";

/// Why a token was refused or could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    /// The key given is not a PKCS#8 ECDSA P-256 private key.
    #[error("the signing key is not a PKCS#8 ECDSA P-256 key: {0}")]
    BadKey(String),
    /// Signing failed (the system's random source).
    #[error("signing the token failed")]
    Signing,
    /// Not three base64url parts with a JSON header and payload.
    #[error("the token is not a compact JWS: {0}")]
    Malformed(&'static str),
    /// The header names another algorithm (or `none`).
    #[error("the token's algorithm {0:?} is not ES256")]
    Algorithm(String),
    /// The signature does not verify with this key.
    #[error("the token's signature does not verify")]
    Signature,
}

/// The protected header of a token.
#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
}

/// An ES256 key: signs tokens and verifies them.
#[derive(Debug)]
pub struct Signer {
    key: EcdsaKeyPair,
    /// The public key as an uncompressed point `04 || x || y`.
    public: Vec<u8>,
    /// The key id: base64url SHA-256 of the public key's SPKI DER (as kube-apiserver names
    /// its keys).
    key_id: String,
    random: SystemRandom,
}

/// The SPKI DER prefix of an uncompressed P-256 public key (id-ecPublicKey, prime256v1);
/// the 65-byte point follows it.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl Signer {
    /// A signer from a PKCS#8 DER ECDSA P-256 private key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, JwtError> {
        let random = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &random)
                .map_err(|e| JwtError::BadKey(e.to_string()))?;
        let public = key.public_key().as_ref().to_vec();
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&public);
        let key_id = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &spki));
        Ok(Self {
            key,
            public,
            key_id,
            random,
        })
    }

    /// The key id every token carries in its header (`kid`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs `claims` into a compact JWS.
    pub fn sign(&self, claims: &Value) -> Result<String, JwtError> {
        let header = json!({"alg": ALGORITHM, "kid": self.key_id});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.random, signing_input.as_bytes())
            .map_err(|_| JwtError::Signing)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// The claims of `token` if its header says ES256 and its signature verifies with this
    /// key. The claims are not judged here.
    pub fn verify(&self, token: &str) -> Result<Value, JwtError> {
        let mut parts = token.split('.');
        let (Some(header_part), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("it does not have three parts"));
        };
        let decode = |part: &str, what: &'static str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwtError::Malformed(what))
        };
        let header: Header =
            serde_json::from_slice(&decode(header_part, "the header is not base64url")?)
                .map_err(|_| JwtError::Malformed("the header is not a JSON object"))?;
        if header.alg != ALGORITHM {
            return Err(JwtError::Algorithm(header.alg));
        }
        let signature = decode(signature, "the signature is not base64url")?;
        let signing_input = &token.as_bytes()[..header_part.len() + 1 + payload.len()];
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(signing_input, &signature)
            .map_err(|_| JwtError::Signature)?;
        let claims: Value =
            serde_json::from_slice(&decode(payload, "the payload is not base64url")?)
                .map_err(|_| JwtError::Malformed("the payload is not JSON"))?;
        if !claims.is_object() {
            return Err(JwtError::Malformed("the payload is not a JSON object"));
        }
        Ok(claims)
    }

    /// The public key as a JSON Web Key (`kty` EC, `crv` P-256), for `/openid/v1/jwks`.
    pub fn jwk(&self) -> Value {
        let (x, y) = self.public[1..].split_at(32);
        json!({
            "use": "sig",
            "kty": "EC",
            "kid": self.key_id,
            "crv": "P-256",
            "alg": ALGORITHM,
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        let random = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &random)
                .unwrap_or_else(|e| panic!("generating a key: {e}"));
        Signer::from_pkcs8(pkcs8.as_ref()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_signed_token_verifies_to_its_claims() -> Result<(), JwtError> {
        let signer = signer();
        let claims = json!({"sub": "system:serviceaccount:default:x", "exp": 5});
        let token = signer.sign(&claims)?;
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(signer.verify(&token)?, claims);
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap_or_default())
                .map_err(|_| JwtError::Malformed("test"))?,
        )
        .map_err(|_| JwtError::Malformed("test"))?;
        assert_eq!(header, json!({"alg": "ES256", "kid": signer.key_id()}));
        Ok(())
    }

    #[test]
    fn another_key_does_not_verify_it() -> Result<(), JwtError> {
        let token = signer().sign(&json!({"sub": "a"}))?;
        assert_eq!(signer().verify(&token), Err(JwtError::Signature));
        Ok(())
    }

    #[test]
    fn a_changed_payload_or_signature_does_not_verify() -> Result<(), JwtError> {
        let signer = signer();
        let token = signer.sign(&json!({"sub": "a"}))?;
        let parts: Vec<&str> = token.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(json!({"sub": "admin"}).to_string());
        let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(signer.verify(&forged), Err(JwtError::Signature));
        let mut signature = URL_SAFE_NO_PAD
            .decode(parts[2])
            .map_err(|_| JwtError::Malformed("test"))?;
        signature[10] ^= 1;
        let flipped = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            URL_SAFE_NO_PAD.encode(&signature)
        );
        assert_eq!(signer.verify(&flipped), Err(JwtError::Signature));
        Ok(())
    }

    #[test]
    fn other_algorithms_and_malformed_tokens_are_refused() -> Result<(), JwtError> {
        let signer = signer();
        let token = signer.sign(&json!({"sub": "a"}))?;
        let rest = token.split_once('.').map_or("", |(_, rest)| rest);
        let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        assert_eq!(
            signer.verify(&format!("{none}.{rest}")),
            Err(JwtError::Algorithm("none".to_owned()))
        );
        for bad in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.e30.e30",
            "e30.e30.e30",
            &format!("{}.e30", token),
        ] {
            assert!(
                matches!(
                    signer.verify(bad),
                    Err(JwtError::Malformed(_) | JwtError::Algorithm(_))
                ),
                "{bad:?} was accepted: {:?}",
                signer.verify(bad)
            );
        }
        Ok(())
    }

    #[test]
    fn the_jwk_carries_the_public_point() {
        let signer = signer();
        let jwk = signer.jwk();
        let coordinate = |name: &str| {
            URL_SAFE_NO_PAD
                .decode(jwk[name].as_str().unwrap_or_default())
                .unwrap_or_default()
        };
        let mut point = vec![4u8];
        point.extend(coordinate("x"));
        point.extend(coordinate("y"));
        assert_eq!(point, signer.public);
        assert_eq!(jwk["kid"], signer.key_id());
        assert_eq!(jwk["crv"], "P-256");
    }
}
