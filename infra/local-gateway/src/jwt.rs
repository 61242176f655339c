//! Tokens for the local stack: the stack's RS256 key pair (`STATE/jwt/*.pem`), minting tokens
//! as an identity provider would, and checking them as API Gateway's JWT authorizer does
//! before a route's function is invoked.

use crate::config::{ConfigError, GatewayConfig, JwtAuthorizer};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lambda_http::http::HeaderMap;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use flash_aws::http::ADMIN_SCOPE;

/// The `kid` of the stack's one signing key.
pub const KEY_ID: &str = "flash-sale-local";
const PRIVATE_PEM: &str = "private.pem";
const PUBLIC_PEM: &str = "public.pem";

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read the signing key {path} (the gateway makes it when `make up` starts it)")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the signing key in {path}")]
    WriteKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate an RSA key pair")]
    KeyGeneration,
    #[error("invalid signing key")]
    Key(#[source] jsonwebtoken::errors::Error),
    #[error("cannot sign the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error("unsupported identity source {0:?}: only $request.header.NAME runs locally")]
    IdentitySource(String),
}

/// Why the authorizer refused a request; API Gateway answers both with 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token in the identity source")]
    Missing,
    #[error("{0}")]
    Invalid(String),
}

fn key_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("jwt")
}

fn read_key(path: PathBuf) -> Result<Vec<u8>, JwtError> {
    std::fs::read(&path).map_err(|source| JwtError::ReadKey { path, source })
}

fn pem(label: &str, der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Makes the stack's key pair unless it already has one, so tokens minted earlier stay valid
/// across restarts of the same state directory. Returns whether it made one.
pub fn ensure_keys(state_dir: &Path) -> Result<bool, JwtError> {
    let dir = key_dir(state_dir);
    if dir.join(PRIVATE_PEM).is_file() && dir.join(PUBLIC_PEM).is_file() {
        return Ok(false);
    }
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| JwtError::WriteKey { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
    let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| JwtError::KeyGeneration)?;
    let private = pair.as_der().map_err(|_| JwtError::KeyGeneration)?;
    let public = pair
        .public_key()
        .as_der()
        .map_err(|_| JwtError::KeyGeneration)?;
    // Written beside and renamed into place, public key last: a reader that sees both files
    // sees a matching pair.
    for (name, text) in [
        (PRIVATE_PEM, pem("PRIVATE KEY", private.as_ref())),
        (PUBLIC_PEM, pem("PUBLIC KEY", public.as_ref())),
    ] {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        write_private(&tmp, text.as_bytes()).map_err(write_err(&tmp))?;
        std::fs::rename(&tmp, dir.join(name)).map_err(write_err(&dir))?;
    }
    Ok(true)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs tokens with the stack's private key. Load it once and call [`Minter::mint`] as often
/// as needed: a load generator mints thousands of tokens this way.
pub struct Minter {
    key: EncodingKey,
    header: Header,
    issuer: String,
    audience: String,
}

impl Minter {
    /// The stack's key, issuer and audience, from `STATE/jwt/private.pem` and
    /// `STATE/gateway.json`.
    pub fn load(state_dir: &Path) -> Result<Self, JwtError> {
        let config = GatewayConfig::load(state_dir)?;
        let authorizer = config.token_authorizer()?;
        let pem = read_key(key_dir(state_dir).join(PRIVATE_PEM))?;
        Self::new(&pem, authorizer)
    }

    pub fn new(private_pem: &[u8], authorizer: &JwtAuthorizer) -> Result<Self, JwtError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KEY_ID.to_owned());
        Ok(Self {
            key: EncodingKey::from_rsa_pem(private_pem).map_err(JwtError::Key)?,
            header,
            issuer: authorizer.issuer.clone(),
            audience: authorizer.audience.first().cloned().unwrap_or_default(),
        })
    }

    /// A token for `sub`, valid for `ttl` from now, with the admin scope when `admin`.
    pub fn mint(&self, sub: &str, admin: bool, ttl: Duration) -> Result<String, JwtError> {
        let iat = now_s();
        let mut claims = serde_json::json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": iat,
            "exp": iat.saturating_add(ttl.as_secs()),
        });
        if admin {
            claims["scope"] = Value::from(ADMIN_SCOPE);
        }
        self.sign(&claims)
    }

    /// Signs any claims (for tests of rejected tokens: expired, another audience...).
    pub fn sign(&self, claims: &Value) -> Result<String, JwtError> {
        jsonwebtoken::encode(&self.header, claims, &self.key).map_err(JwtError::Sign)
    }
}

/// One token for `sub`; see [`Minter`] to mint many.
pub fn mint(state_dir: &Path, sub: &str, admin: bool, ttl: Duration) -> Result<String, JwtError> {
    Minter::load(state_dir)?.mint(sub, admin, ttl)
}

/// A verified token's claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    /// The claims as API Gateway hands them to the function: every value a string, arrays
    /// as `[a b]`.
    pub fn as_strings(&self) -> HashMap<String, String> {
        self.0
            .iter()
            .map(|(k, v)| (k.clone(), claim_text(v)))
            .collect()
    }

    /// The token's scopes (`scope`, space separated, or Cognito's `scp` list).
    pub fn scopes(&self) -> Vec<String> {
        match self.0.get("scope").or_else(|| self.0.get("scp")) {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(items)) => items.iter().map(claim_text).collect(),
            _ => Vec::new(),
        }
    }
}

fn claim_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(claim_text).collect();
            format!("[{}]", items.join(" "))
        }
        other => other.to_string(),
    }
}

/// API Gateway's JWT authorizer: RS256 only, signed by the stack's key, with the configured
/// issuer, an accepted audience (`aud`, or `client_id` when there is no `aud`), not expired
/// (`exp` is required), and `nbf`/`iat` not in the future.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    audience: Vec<String>,
    header: String,
}

impl Verifier {
    pub fn load(state_dir: &Path, authorizer: &JwtAuthorizer) -> Result<Self, JwtError> {
        let pem = read_key(key_dir(state_dir).join(PUBLIC_PEM))?;
        Self::new(&pem, authorizer)
    }

    pub fn new(public_pem: &[u8], authorizer: &JwtAuthorizer) -> Result<Self, JwtError> {
        let header = authorizer
            .identity_source
            .strip_prefix("$request.header.")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| JwtError::IdentitySource(authorizer.identity_source.clone()))?
            .to_ascii_lowercase();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false; // checked below, with the client_id fallback
        validation.set_issuer(&authorizer.issuer.split(',').collect::<Vec<_>>());
        validation.set_required_spec_claims(&["exp", "iss"]);
        Ok(Self {
            key: DecodingKey::from_rsa_pem(public_pem).map_err(JwtError::Key)?,
            validation,
            audience: authorizer.audience.clone(),
            header,
        })
    }

    /// Checks the identity source of a request.
    pub fn verify(&self, headers: &HeaderMap) -> Result<Claims, AuthError> {
        let value = headers
            .get(self.header.as_str())
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::Invalid("the token is not valid text".into()))?
            .trim();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            None if value.eq_ignore_ascii_case("bearer") => "",
            _ => value,
        };
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        self.verify_token(token)
    }

    pub fn verify_token(&self, token: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(describe(e.kind())))?;
        if let Some(kid) = data.header.kid.as_deref() {
            if kid != KEY_ID {
                return Err(AuthError::Invalid(format!("no signing key with kid {kid}")));
            }
        }
        let claims = data.claims;
        let accepted = |v: &Value| matches!(v, Value::String(s) if self.audience.contains(s));
        let audience_ok = match claims.get("aud") {
            Some(Value::Array(items)) => items.iter().any(accepted),
            Some(aud) => accepted(aud),
            None => claims.get("client_id").is_some_and(accepted),
        };
        if !audience_ok {
            return Err(AuthError::Invalid(
                "the token has an invalid audience".into(),
            ));
        }
        if let Some(iat) = claims.get("iat") {
            if iat.as_u64().is_none_or(|iat| iat > now_s()) {
                return Err(AuthError::Invalid("the token has an invalid iat".into()));
            }
        }
        Ok(Claims(claims))
    }
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet".into(),
        ErrorKind::InvalidIssuer => "the token has an invalid issuer".into(),
        ErrorKind::InvalidSignature => "the token has an invalid signature".into(),
        ErrorKind::InvalidAlgorithm => "signing method not allowed: only RS256".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
        ErrorKind::InvalidClaimFormat(c) => format!("the token's {c} claim is malformed"),
        _ => "the token is malformed".into(),
    }
}

/// The local authorizer and one key pair, shared by this crate's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::sync::OnceLock;

    pub(crate) fn authorizer() -> JwtAuthorizer {
        JwtAuthorizer {
            identity_source: "$request.header.Authorization".into(),
            issuer: "flash-sale-local".into(),
            audience: vec!["flash-sale-api".into()],
        }
    }

    /// One key pair (private, public PEM) for every test of the crate (RSA generation is
    /// the slow part).
    pub(crate) fn keys() -> &'static (String, String) {
        static KEYS: OnceLock<(String, String)> = OnceLock::new();
        KEYS.get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("local-gateway-jwt-{}", std::process::id()));
            assert!(ensure_keys(&dir).unwrap());
            assert!(!ensure_keys(&dir).unwrap(), "an existing pair is kept");
            let read = |name| std::fs::read_to_string(key_dir(&dir).join(name)).unwrap();
            let keys = (read(PRIVATE_PEM), read(PUBLIC_PEM));
            std::fs::remove_dir_all(&dir).unwrap();
            keys
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{authorizer, keys};
    use super::*;
    use lambda_http::http::HeaderValue;

    fn minter() -> Minter {
        Minter::new(keys().0.as_bytes(), &authorizer()).unwrap()
    }

    /// A token `minter` signs for `sub`, valid for a minute.
    fn token_for(sub: &str, admin: bool) -> String {
        minter().mint(sub, admin, Duration::from_secs(60)).unwrap()
    }

    fn verifier() -> Verifier {
        Verifier::new(keys().1.as_bytes(), &authorizer()).unwrap()
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        headers.insert("authorization", value);
        headers
    }

    fn claims(overrides: Value) -> Value {
        let now = now_s();
        let mut claims = serde_json::json!({
            "iss": "flash-sale-local", "aud": "flash-sale-api", "sub": "alice",
            "iat": now, "exp": now + 60,
        });
        for (k, v) in overrides.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    }

    fn rejection(token: &str) -> String {
        match verifier().verify(&bearer(token)) {
            Err(AuthError::Invalid(why)) => why,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn a_minted_token_is_accepted_with_its_claims() {
        let token = token_for("alice", true);
        let claims = verifier().verify(&bearer(&token)).unwrap();
        let strings = claims.as_strings();
        assert_eq!(strings["sub"], "alice");
        assert_eq!(strings["iss"], "flash-sale-local");
        assert_eq!(strings["aud"], "flash-sale-api");
        assert_eq!(strings["scope"], ADMIN_SCOPE);
        assert!(strings["exp"].parse::<u64>().unwrap() > now_s());
        assert_eq!(claims.scopes(), vec![ADMIN_SCOPE.to_owned()]);
    }

    #[test]
    fn a_buyer_token_has_no_scope() {
        let token = token_for("bob", false);
        let claims = verifier().verify(&bearer(&token)).unwrap();
        assert!(!claims.0.contains_key("scope"));
        assert!(claims.scopes().is_empty());
    }

    #[test]
    fn a_token_without_the_bearer_prefix_is_accepted_as_api_gateway_does() {
        let token = token_for("alice", false);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_str(&token).unwrap());
        assert!(verifier().verify(&headers).is_ok());
    }

    #[test]
    fn a_missing_header_is_refused() {
        assert_eq!(
            verifier().verify(&HeaderMap::new()),
            Err(AuthError::Missing)
        );
        assert_eq!(verifier().verify(&bearer("")), Err(AuthError::Missing));
    }

    #[test]
    fn a_wrong_issuer_is_refused() {
        let token = minter()
            .sign(&claims(
                serde_json::json!({"iss": "https://elsewhere.example/"}),
            ))
            .unwrap();
        assert_eq!(rejection(&token), "the token has an invalid issuer");
    }

    #[test]
    fn a_wrong_audience_is_refused() {
        let token = minter()
            .sign(&claims(serde_json::json!({"aud": "another-api"})))
            .unwrap();
        assert_eq!(rejection(&token), "the token has an invalid audience");
    }

    #[test]
    fn an_audience_list_or_a_client_id_is_accepted() {
        let list = minter()
            .sign(&claims(serde_json::json!({"aud": ["x", "flash-sale-api"]})))
            .unwrap();
        assert!(verifier().verify(&bearer(&list)).is_ok());
        let mut cognito = claims(serde_json::json!({"client_id": "flash-sale-api"}));
        cognito.as_object_mut().unwrap().remove("aud");
        let cognito = minter().sign(&cognito).unwrap();
        assert!(verifier().verify(&bearer(&cognito)).is_ok());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let now = now_s();
        let token = minter()
            .sign(&claims(
                serde_json::json!({"iat": now - 120, "exp": now - 1}),
            ))
            .unwrap();
        assert_eq!(rejection(&token), "the token has expired");
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        let mut no_exp = claims(serde_json::json!({}));
        no_exp.as_object_mut().unwrap().remove("exp");
        let token = minter().sign(&no_exp).unwrap();
        assert_eq!(rejection(&token), "the token has no exp claim");
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let token = minter()
            .sign(&claims(serde_json::json!({"nbf": now_s() + 300})))
            .unwrap();
        assert_eq!(rejection(&token), "the token is not valid yet");
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let token = token_for("alice", false);
        // Claim to be someone else, keeping alice's signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(claims(serde_json::json!({"sub": "mallory"})).to_string());
        parts[1] = &forged;
        assert_eq!(
            rejection(&parts.join(".")),
            "the token has an invalid signature"
        );
    }

    #[test]
    fn a_token_signed_by_another_key_is_refused() {
        let dir = std::env::temp_dir().join(format!("local-gateway-other-{}", std::process::id()));
        ensure_keys(&dir).unwrap();
        let other = std::fs::read(key_dir(&dir).join(PRIVATE_PEM)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let token = Minter::new(&other, &authorizer())
            .unwrap()
            .mint("alice", true, Duration::from_secs(60))
            .unwrap();
        assert_eq!(rejection(&token), "the token has an invalid signature");
    }

    #[test]
    fn other_algorithms_are_refused() {
        let header = Header::new(Algorithm::HS256);
        let key = EncodingKey::from_secret(keys().1.as_bytes());
        let token = jsonwebtoken::encode(&header, &claims(serde_json::json!({})), &key).unwrap();
        assert_eq!(rejection(&token), "signing method not allowed: only RS256");
        assert_eq!(rejection("not.a.jwt"), "the token is malformed");
    }

    #[test]
    fn claims_become_strings_as_api_gateway_passes_them() {
        let claims = Claims(
            serde_json::json!({"exp": 1767272400, "groups": ["a", "b"], "ok": true})
                .as_object()
                .unwrap()
                .clone(),
        );
        let strings = claims.as_strings();
        assert_eq!(strings["exp"], "1767272400");
        assert_eq!(strings["groups"], "[a b]");
        assert_eq!(strings["ok"], "true");
    }
}
