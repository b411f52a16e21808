//! Service-account tokens, as kube-apiserver's bound tokens: the `serviceaccounts/NAME/token`
//! subresource (a POST of an `authentication.k8s.io/v1` TokenRequest answered with a signed
//! JWT), the claims those tokens carry, and the checks a presented token must pass to
//! authenticate its request as `system:serviceaccount:NS:NAME` (signature, issuer, time,
//! audience, and the ServiceAccount and bound object still existing with the same uid).
//! Also the OIDC discovery documents that publish the verification key.
//!
//! Owns the token's meaning; the JWS format and cryptography are [`super::jwt`]'s, the wire
//! (where the token comes from, how a refusal is answered) is [`super::server`]'s. It must
//! not decide authorization.
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use super::{
    jwt::{JwtError, Signer},
    objects,
    rest::Rest,
    server::Identity,
    status::{ApiError, Cause},
};

/// kube-apiserver's conventional issuer (and so the default API audience).
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The validity of a token when the request names none (the API's default).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// The shortest validity a request may ask for (10 minutes, as upstream validates).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;

/// The longest validity a request may ask for (2^32 seconds, as upstream validates).
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// Clock skew allowed when checking `exp`, `nbf` and deletions (go-jose's default leeway,
/// which kube-apiserver uses).
pub const LEEWAY_SECONDS: i64 = 60;

const GROUP: &str = "authentication.k8s.io";
const KIND: &str = "TokenRequest";

/// The group every service account is in.
pub const ALL_SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";

/// The group of every authenticated identity.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// How tokens are issued and accepted (`--service-account-issuer`, `--api-audiences`,
/// `--service-account-max-token-expiration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOptions {
    /// The `iss` of every token issued; only tokens with it are accepted.
    pub issuer: String,
    /// The audiences the API accepts; a request without audiences gets these.
    pub api_audiences: Vec<String>,
    /// The longest validity issued (longer requests get this), if any.
    pub max_expiration_seconds: Option<i64>,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self {
            issuer: DEFAULT_ISSUER.to_owned(),
            api_audiences: vec![DEFAULT_ISSUER.to_owned()],
            max_expiration_seconds: None,
        }
    }
}

/// A name and uid in the private claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectClaim {
    /// The object's name.
    pub name: String,
    /// The object's uid when the token was issued.
    pub uid: String,
}

/// The `kubernetes.io` private claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount.
    pub serviceaccount: ObjectClaim,
    /// The Pod the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectClaim>,
    /// The Secret the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectClaim>,
    /// The Node the token (or its pod) is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectClaim>,
}

/// An `aud` claim: one audience or a list (RFC 7519 §4.1.3 allows both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audiences {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audiences {
    fn contains_any(&self, accepted: &[String]) -> bool {
        match self {
            Self::One(aud) => accepted.contains(aud),
            Self::Many(auds) => auds.iter().any(|a| accepted.contains(a)),
        }
    }
}

/// The claims of a service-account token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// `system:serviceaccount:NS:NAME`.
    pub sub: String,
    /// Audiences.
    pub aud: Audiences,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// A unique id of this token.
    #[serde(default)]
    pub jti: String,
    /// Which ServiceAccount and bound objects.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

/// The user name of a service account.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Why a presented token does not authenticate. The client sees only 401; the reason is
/// logged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenRejected {
    /// Not a token of this key.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// The claims are not a service-account token's.
    #[error("the token's claims are not a service account's: {0}")]
    Claims(String),
    /// Another issuer's token.
    #[error("the token's issuer {0:?} is not this server's")]
    Issuer(String),
    /// Past `exp`.
    #[error("the token has expired")]
    Expired,
    /// Before `nbf`.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// None of its audiences is the API's.
    #[error("the token's audiences are not the API's")]
    Audience,
    /// The ServiceAccount or bound object is gone, recreated or being deleted.
    #[error("the token has been invalidated: {0}")]
    Invalidated(String),
}

/// Issues and checks service-account tokens with this server's key.
#[derive(Debug)]
pub struct ServiceAccountTokens {
    options: TokenOptions,
    signer: Signer,
}

/// Seconds since the epoch now.
pub fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn timestamp(seconds: i64) -> Result<String, ApiError> {
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .ok_or_else(|| ApiError::internal(format!("time {seconds} cannot be formatted")))
}

fn invalid(name: &str, cause: Cause) -> ApiError {
    ApiError::invalid(GROUP, KIND, name, vec![cause])
}

/// The validity a TokenRequest asks for, checked as upstream validates it.
fn requested_expiration(name: &str, spec: &Value) -> Result<i64, ApiError> {
    let field = "spec.expirationSeconds";
    let seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => return Ok(DEFAULT_EXPIRATION_SECONDS),
        Some(value) => value.as_i64().ok_or_else(|| {
            invalid(
                name,
                Cause::invalid(field, format!("Invalid value: {value}: must be an integer")),
            )
        })?,
    };
    if seconds < MIN_EXPIRATION_SECONDS {
        return Err(invalid(
            name,
            Cause::invalid(
                field,
                format!(
                    "Invalid value: {seconds}: may not specify a duration less than 10 minutes"
                ),
            ),
        ));
    }
    if seconds > MAX_EXPIRATION_SECONDS {
        return Err(invalid(
            name,
            Cause::invalid(
                field,
                format!(
                    "Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds"
                ),
            ),
        ));
    }
    Ok(seconds)
}

fn object_claim(obj: &Value) -> ObjectClaim {
    ObjectClaim {
        name: objects::name(obj).unwrap_or_default().to_owned(),
        uid: obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Whether an object was marked for deletion more than the leeway before `now`.
fn deleted_before_leeway(obj: &Value, now: i64) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .is_some_and(|t| t.unix_timestamp() < now - LEEWAY_SECONDS)
}

/// Checks that an object a token names is still the one it was issued for.
pub fn check_still_bound(
    what: &str,
    claim: &ObjectClaim,
    current: Option<&Value>,
    now: i64,
) -> Result<(), TokenRejected> {
    let Some(current) = current else {
        return Err(TokenRejected::Invalidated(format!(
            "{what} {:?} does not exist",
            claim.name
        )));
    };
    if deleted_before_leeway(current, now) {
        return Err(TokenRejected::Invalidated(format!(
            "{what} {:?} has been deleted",
            claim.name
        )));
    }
    let uid = object_claim(current).uid;
    if uid != claim.uid {
        return Err(TokenRejected::Invalidated(format!(
            "{what} {:?} has uid {uid}, the token was issued for {}",
            claim.name, claim.uid
        )));
    }
    Ok(())
}

impl ServiceAccountTokens {
    /// Tokens signed with the PKCS#8 ECDSA P-256 key `pkcs8` (see [`crate::pki::service_account_key`]).
    pub fn new(options: TokenOptions, pkcs8: &[u8]) -> Result<Self, JwtError> {
        Ok(Self {
            options,
            signer: Signer::from_pkcs8(pkcs8)?,
        })
    }

    /// How tokens are issued and accepted.
    pub fn options(&self) -> &TokenOptions {
        &self.options
    }

    /// Signs claims into a token.
    pub fn sign(&self, claims: &Claims) -> Result<String, JwtError> {
        let value = serde_json::to_value(claims).map_err(|_| JwtError::Signing)?;
        self.signer.sign(&value)
    }

    /// The claims of `token` if this server issued it and it is valid at `now` for the API
    /// (signature, issuer, `exp`/`nbf` with leeway, an audience of the API). Whether its
    /// objects still exist is [`Self::authenticate`]'s part.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenRejected> {
        let value = self.signer.verify(token)?;
        let claims: Claims =
            serde_json::from_value(value).map_err(|e| TokenRejected::Claims(e.to_string()))?;
        if claims.iss != self.options.issuer {
            return Err(TokenRejected::Issuer(claims.iss));
        }
        if now - LEEWAY_SECONDS > claims.exp {
            return Err(TokenRejected::Expired);
        }
        if now + LEEWAY_SECONDS < claims.nbf {
            return Err(TokenRejected::NotYetValid);
        }
        if !claims.aud.contains_any(&self.options.api_audiences) {
            return Err(TokenRejected::Audience);
        }
        let k8s = &claims.kubernetes;
        if claims.sub != service_account_user(&k8s.namespace, &k8s.serviceaccount.name) {
            return Err(TokenRejected::Claims(format!(
                "subject {:?} is not the service account in the claims",
                claims.sub
            )));
        }
        Ok(claims)
    }

    /// The identity of a bearer token: [`Self::verify`], then the ServiceAccount and the
    /// object the token is bound to must still exist with the uids it was issued for.
    pub async fn authenticate(
        &self,
        rest: &Rest,
        token: &str,
        now: i64,
    ) -> Result<Identity, TokenRejected> {
        let claims = self.verify(token, now)?;
        let k8s = &claims.kubernetes;
        let ns = k8s.namespace.as_str();
        let sa = fetch(rest, "serviceaccounts", Some(ns), &k8s.serviceaccount.name).await?;
        check_still_bound("service account", &k8s.serviceaccount, sa.as_ref(), now)?;
        if let Some(pod) = &k8s.pod {
            let current = fetch(rest, "pods", Some(ns), &pod.name).await?;
            check_still_bound("pod", pod, current.as_ref(), now)?;
        }
        if let Some(secret) = &k8s.secret {
            let current = fetch(rest, "secrets", Some(ns), &secret.name).await?;
            check_still_bound("secret", secret, current.as_ref(), now)?;
        }
        // A node in the claims is checked only when the token is bound to it; a pod's node
        // is information (as upstream).
        if let (Some(node), None) = (&k8s.node, &k8s.pod) {
            let current = fetch(rest, "nodes", None, &node.name).await?;
            check_still_bound("node", node, current.as_ref(), now)?;
        }
        Ok(Identity {
            user: claims.sub.clone(),
            groups: vec![
                ALL_SERVICE_ACCOUNTS_GROUP.to_owned(),
                format!("{ALL_SERVICE_ACCOUNTS_GROUP}:{ns}"),
                AUTHENTICATED_GROUP.to_owned(),
            ],
        })
    }

    /// POST `serviceaccounts/NAME/token`: checks the TokenRequest, finds the ServiceAccount
    /// (404) and the bound object, and answers the request with `status.token` and
    /// `status.expirationTimestamp`.
    pub async fn create(
        &self,
        rest: &Rest,
        namespace: &str,
        name: &str,
        request: Value,
        now: i64,
    ) -> Result<Value, ApiError> {
        if !request.is_object() {
            return Err(ApiError::bad_request(
                "a TokenRequest must be a JSON object",
            ));
        }
        let kind = request.get("kind").and_then(Value::as_str).unwrap_or(KIND);
        if kind != KIND {
            return Err(ApiError::bad_request(format!(
                "expected a TokenRequest, got a {kind}"
            )));
        }
        if let Some(body_name) = objects::name(&request).filter(|n| !n.is_empty()) {
            if body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the TokenRequest ({body_name}) does not match the name of the service account ({name})"
                )));
            }
        }
        let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
        let mut expiration = requested_expiration(name, &spec)?;
        let audiences: Vec<String> = match spec.get("audiences") {
            None | Some(Value::Null) => Vec::new(),
            Some(value) => serde_json::from_value(value.clone()).map_err(|_| {
                invalid(
                    name,
                    Cause::invalid("spec.audiences", "must be a list of strings"),
                )
            })?,
        };
        let audiences = if audiences.is_empty() {
            self.options.api_audiences.clone()
        } else {
            audiences
        };
        let bound = spec.get("boundObjectRef").filter(|r| !r.is_null()).cloned();

        let Some(sa) = fetch_api(rest, "serviceaccounts", Some(namespace), name).await? else {
            return Err(ApiError::not_found("", "serviceaccounts", name));
        };
        if let Some(max) = self.options.max_expiration_seconds {
            expiration = expiration.min(max);
        }

        let mut k8s = KubernetesClaims {
            namespace: namespace.to_owned(),
            serviceaccount: object_claim(&sa),
            pod: None,
            secret: None,
            node: None,
        };
        if let Some(reference) = &bound {
            self.bind(rest, namespace, name, reference, &mut k8s)
                .await?;
        }
        let exp = now + expiration;
        let claims = Claims {
            iss: self.options.issuer.clone(),
            sub: service_account_user(namespace, name),
            aud: Audiences::Many(audiences.clone()),
            exp,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: k8s,
        };
        let token = self
            .sign(&claims)
            .map_err(|e| ApiError::internal(format!("failed to generate token: {e}")))?;
        let mut spec = json!({"audiences": audiences, "expirationSeconds": expiration});
        if let Some(reference) = bound {
            spec["boundObjectRef"] = reference;
        }
        Ok(json!({
            "apiVersion": format!("{GROUP}/v1"),
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": timestamp(now)?},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": timestamp(exp)?},
        }))
    }

    /// Fills the claims of the object a TokenRequest binds to (Pod, Secret or Node of the
    /// core group), as upstream: it must exist, a uid given must be its uid (409), and a pod
    /// must run as this service account (400). A pod's node is recorded too.
    async fn bind(
        &self,
        rest: &Rest,
        namespace: &str,
        name: &str,
        reference: &Value,
        k8s: &mut KubernetesClaims,
    ) -> Result<(), ApiError> {
        let text = |field: &str| {
            reference
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (api_version, kind, target, uid) =
            (text("apiVersion"), text("kind"), text("name"), text("uid"));
        if !(api_version.is_empty() || api_version == "v1") {
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type {api_version}, Kind={kind}"
            )));
        }
        let (plural, scoped) = match kind.as_str() {
            "Pod" => ("pods", Some(namespace)),
            "Secret" => ("secrets", Some(namespace)),
            "Node" => ("nodes", None),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token to object of type {api_version}, Kind={kind}"
                )))
            }
        };
        if target.is_empty() {
            return Err(invalid(name, Cause::required("spec.boundObjectRef.name")));
        }
        let Some(object) = fetch_api(rest, plural, scoped, &target).await? else {
            return Err(ApiError::not_found("", plural, &target));
        };
        let claim = object_claim(&object);
        if !uid.is_empty() && uid != claim.uid {
            return Err(ApiError::conflict(
                "",
                plural,
                &target,
                &format!(
                    "the UID in the bound object reference ({uid}) does not match the UID in record ({}). The object might have been deleted and then recreated",
                    claim.uid
                ),
            ));
        }
        match kind.as_str() {
            "Pod" => {
                let runs_as = object
                    .pointer("/spec/serviceAccountName")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .unwrap_or("default");
                if runs_as != name {
                    return Err(ApiError::bad_request(format!(
                        "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
                    )));
                }
                let node = object
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty());
                if let Some(node) = node {
                    k8s.node = Some(match fetch_api(rest, "nodes", None, node).await? {
                        Some(found) => object_claim(&found),
                        None => ObjectClaim {
                            name: node.to_owned(),
                            uid: String::new(),
                        },
                    });
                }
                k8s.pod = Some(claim);
            }
            "Secret" => k8s.secret = Some(claim),
            _ => k8s.node = Some(claim),
        }
        Ok(())
    }

    /// `/.well-known/openid-configuration` (OIDC discovery of the issuer).
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.options.issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", self.options.issuer.trim_end_matches('/')),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [super::jwt::ALGORITHM],
        })
    }

    /// `/openid/v1/jwks`: the key that verifies this server's tokens.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.signer.jwk()]})
    }
}

/// An object of a core resource, `None` when it does not exist.
async fn fetch_api(
    rest: &Rest,
    plural: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let Some(def) = rest.registry.find("", "v1", plural) else {
        return Err(ApiError::internal(format!("{plural} are not served")));
    };
    match rest.get(&def, namespace, name).await {
        Ok(obj) => Ok(Some(obj)),
        Err(err) if err.code == 404 => Ok(None),
        Err(err) => Err(err),
    }
}

/// [`fetch_api`] for authentication: a failure to read is a refusal.
async fn fetch(
    rest: &Rest,
    plural: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<Value>, TokenRejected> {
    fetch_api(rest, plural, namespace, name)
        .await
        .map_err(|e| TokenRejected::Invalidated(format!("reading {plural}/{name}: {}", e.message)))
}

#[cfg(test)]
mod tests {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    use super::*;

    fn key() -> Vec<u8> {
        let random = ring::rand::SystemRandom::new();
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &random)
            .map(|k| k.as_ref().to_vec())
            .unwrap_or_else(|e| panic!("generating a key: {e}"))
    }

    fn tokens() -> ServiceAccountTokens {
        ServiceAccountTokens::new(TokenOptions::default(), &key()).unwrap_or_else(|e| panic!("{e}"))
    }

    const NOW: i64 = 1_800_000_000;

    fn claims() -> Claims {
        Claims {
            iss: DEFAULT_ISSUER.to_owned(),
            sub: "system:serviceaccount:default:builder".to_owned(),
            aud: Audiences::Many(vec![DEFAULT_ISSUER.to_owned()]),
            exp: NOW + 3600,
            iat: NOW,
            nbf: NOW,
            jti: "id".to_owned(),
            kubernetes: KubernetesClaims {
                namespace: "default".to_owned(),
                serviceaccount: ObjectClaim {
                    name: "builder".to_owned(),
                    uid: "u1".to_owned(),
                },
                pod: None,
                secret: None,
                node: None,
            },
        }
    }

    #[test]
    fn a_token_it_signed_verifies_to_its_claims() -> Result<(), Box<dyn std::error::Error>> {
        let tokens = tokens();
        let token = tokens.sign(&claims())?;
        assert_eq!(tokens.verify(&token, NOW + 10)?, claims());
        // The wire form has upstream's claim names.
        let payload = token.split('.').nth(1).unwrap_or_default();
        let payload: Value = serde_json::from_slice(&base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            payload,
        )?)?;
        assert_eq!(payload["kubernetes.io"]["serviceaccount"]["uid"], "u1");
        assert!(payload["kubernetes.io"].get("pod").is_none());
        Ok(())
    }

    #[test]
    fn expired_and_future_tokens_are_refused_beyond_the_leeway(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let tokens = tokens();
        let token = tokens.sign(&claims())?;
        let exp = claims().exp;
        assert!(tokens.verify(&token, exp + LEEWAY_SECONDS).is_ok());
        assert_eq!(
            tokens.verify(&token, exp + LEEWAY_SECONDS + 1),
            Err(TokenRejected::Expired)
        );
        assert_eq!(
            tokens.verify(&token, NOW - LEEWAY_SECONDS - 1),
            Err(TokenRejected::NotYetValid)
        );
        Ok(())
    }

    #[test]
    fn another_audience_or_issuer_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let tokens = tokens();
        let mut other_audience = claims();
        other_audience.aud = Audiences::Many(vec!["vault".to_owned()]);
        assert_eq!(
            tokens.verify(&tokens.sign(&other_audience)?, NOW),
            Err(TokenRejected::Audience)
        );
        let mut single = claims();
        single.aud = Audiences::One(DEFAULT_ISSUER.to_owned());
        assert!(tokens.verify(&tokens.sign(&single)?, NOW).is_ok());
        let mut other_issuer = claims();
        other_issuer.iss = "https://elsewhere".to_owned();
        assert!(matches!(
            tokens.verify(&tokens.sign(&other_issuer)?, NOW),
            Err(TokenRejected::Issuer(_))
        ));
        let mut lying = claims();
        lying.sub = "system:serviceaccount:kube-system:admin".to_owned();
        assert!(matches!(
            tokens.verify(&tokens.sign(&lying)?, NOW),
            Err(TokenRejected::Claims(_))
        ));
        Ok(())
    }

    #[test]
    fn another_servers_key_or_garbage_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let token = tokens().sign(&claims())?;
        assert_eq!(
            tokens().verify(&token, NOW),
            Err(TokenRejected::Jwt(JwtError::Signature))
        );
        assert!(matches!(
            tokens().verify("not-a-token", NOW),
            Err(TokenRejected::Jwt(JwtError::Malformed(_)))
        ));
        // Signed, but not a service account's claims.
        let tokens = tokens();
        let foreign = tokens
            .signer
            .sign(&json!({"iss": DEFAULT_ISSUER, "sub": "admin"}))?;
        assert!(matches!(
            tokens.verify(&foreign, NOW),
            Err(TokenRejected::Claims(_))
        ));
        Ok(())
    }

    #[test]
    fn bound_objects_must_keep_their_uid_and_not_be_long_deleted() {
        let claim = ObjectClaim {
            name: "web".to_owned(),
            uid: "u1".to_owned(),
        };
        let live = json!({"metadata": {"name": "web", "uid": "u1"}});
        assert_eq!(check_still_bound("pod", &claim, Some(&live), NOW), Ok(()));
        assert!(check_still_bound("pod", &claim, None, NOW).is_err());
        let recreated = json!({"metadata": {"name": "web", "uid": "u2"}});
        assert!(check_still_bound("pod", &claim, Some(&recreated), NOW).is_err());
        let at = |seconds: i64| {
            OffsetDateTime::from_unix_timestamp(seconds)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default()
        };
        let terminating = json!({"metadata": {"name": "web", "uid": "u1",
            "deletionTimestamp": at(NOW - 10)}});
        assert_eq!(
            check_still_bound("pod", &claim, Some(&terminating), NOW),
            Ok(())
        );
        let long_gone = json!({"metadata": {"name": "web", "uid": "u1",
            "deletionTimestamp": at(NOW - LEEWAY_SECONDS - 1)}});
        assert!(check_still_bound("pod", &claim, Some(&long_gone), NOW).is_err());
    }

    #[test]
    fn expirations_are_checked_as_upstream() {
        assert_eq!(
            requested_expiration("sa", &json!({})),
            Ok(DEFAULT_EXPIRATION_SECONDS)
        );
        assert_eq!(
            requested_expiration("sa", &json!({"expirationSeconds": 600})),
            Ok(600)
        );
        let short = requested_expiration("sa", &json!({"expirationSeconds": 599}));
        assert!(short.is_err_and(|e| e.code == 422
            && e.details.causes[0].field == "spec.expirationSeconds"
            && e.message.contains("less than 10 minutes")));
        let long = requested_expiration("sa", &json!({"expirationSeconds": (1i64 << 32) + 1}));
        assert!(long.is_err_and(|e| e.code == 422));
    }

    #[test]
    fn discovery_documents_name_the_issuer_and_key() {
        let tokens = tokens();
        let config = tokens.openid_configuration();
        assert_eq!(config["issuer"], DEFAULT_ISSUER);
        assert_eq!(
            config["jwks_uri"],
            format!("{DEFAULT_ISSUER}/openid/v1/jwks")
        );
        assert_eq!(config["id_token_signing_alg_values_supported"][0], "ES256");
        assert_eq!(tokens.jwks()["keys"][0]["kid"], tokens.signer.key_id());
    }
}
