//! The `x-rh-identity` header: decode, apply the platform's rules, validate against its schema.
//!
//! The rules follow the platform's reference middleware, in this order, each with its own reason
//! code: the header must be standard base64 (padding optional) of a JSON object with an
//! `identity` member; a missing top-level `org_id` is filled from `identity.internal.org_id`;
//! `Associate` and `X509` identities may lack account and org; every other identity needs an
//! `org_id` and a `type`; the type must be a known one; and the result must match
//! `api/event/x-rh-identity.header.json`, which holds the type-specific members.
//!
//! The decoded identity is reduced to [`Identity`], the few fields the service may log and store.
//! The raw header never leaves this module except as the original Kafka header bytes that are
//! propagated unchanged to the stream and the dead-letter topic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::reason::{Reason, Rejection};

/// Standard alphabet, padding optional, as producers on the platform differ.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The identity header's schema, embedded from `api/event/`.
pub(crate) const IDENTITY_SCHEMA: &str = include_str!("../../api/event/x-rh-identity.header.json");

/// The identity header's schema, compiled: the one rule set for Kafka messages and API requests.
pub fn compile_schema() -> Result<jsonschema::Validator, super::validate::SchemaError> {
    super::validate::compile_schema(IDENTITY_SCHEMA, "x-rh-identity")
}

/// Identity types the platform issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityType {
    User,
    System,
    ServiceAccount,
    Associate,
    X509,
}

impl IdentityType {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "User" => IdentityType::User,
            "System" => IdentityType::System,
            "ServiceAccount" => IdentityType::ServiceAccount,
            "Associate" => IdentityType::Associate,
            "X509" => IdentityType::X509,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IdentityType::User => "User",
            IdentityType::System => "System",
            IdentityType::ServiceAccount => "ServiceAccount",
            IdentityType::Associate => "Associate",
            IdentityType::X509 => "X509",
        }
    }

    /// Types that may come without an org id (internal staff and certificate identities).
    fn org_optional(self) -> bool {
        matches!(self, IdentityType::Associate | IdentityType::X509)
    }
}

/// What the service keeps of an identity: safe to log and store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub identity_type: IdentityType,
    pub org_id: Option<String>,
    pub account_number: Option<String>,
    pub auth_type: Option<String>,
}

/// Identities already checked, by the SHA-256 digest of their header. Producers send the same
/// header with many messages, and checking one (base64, JSON, schema) was the largest single cost
/// of opening a message in the profile (bench/README.md). Only identities that passed are kept,
/// by digest, so the raw header is not retained; the map is emptied when full, so it stays
/// small whatever the number of distinct identities. An identity is shared (`Arc`) between the
/// cache and the messages that carry it, rather than copied for each.
pub struct IdentityCache {
    checked: Mutex<HashMap<[u8; 32], Arc<Identity>>>,
    capacity: usize,
}

impl IdentityCache {
    pub fn new(capacity: usize) -> Self {
        IdentityCache { checked: Mutex::new(HashMap::new()), capacity }
    }

    /// [`check_identity`], remembering what passed.
    pub fn check(&self, header: Option<&[u8]>, schema: &jsonschema::Validator) -> Result<Arc<Identity>, Rejection> {
        let Some(raw) = header else { return check_identity(header, schema).map(Arc::new) };
        let digest: [u8; 32] = Sha256::digest(raw).into();
        if let Some(identity) = self.checked.lock().expect("identity cache lock").get(&digest) {
            return Ok(identity.clone());
        }
        let identity = Arc::new(check_identity(header, schema)?);
        let mut checked = self.checked.lock().expect("identity cache lock");
        if checked.len() >= self.capacity {
            checked.clear();
        }
        checked.insert(digest, identity.clone());
        Ok(identity)
    }

    /// How many identities are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.checked.lock().expect("identity cache lock").len()
    }
}

/// Decodes and checks an `x-rh-identity` header value. `schema` is the compiled header schema.
pub fn check_identity(header: Option<&[u8]>, schema: &jsonschema::Validator) -> Result<Identity, Rejection> {
    let raw = header.ok_or_else(|| Rejection::new(Reason::IdentityMissing, "the x-rh-identity header is missing"))?;
    let trimmed = raw.trim_ascii();
    if trimmed.is_empty() {
        return Err(Rejection::new(Reason::IdentityMissing, "the x-rh-identity header is empty"));
    }
    let decoded = BASE64
        .decode(trimmed)
        .map_err(|e| Rejection::new(Reason::IdentityNotBase64, format!("x-rh-identity is not standard base64: {e}")))?;
    let mut document: Value = serde_json::from_slice(&decoded).map_err(|e| {
        Rejection::new(
            Reason::IdentityNotJson,
            format!("x-rh-identity does not decode to JSON: {} at line {} column {}", classify(&e), e.line(), e.column()),
        )
    })?;
    let identity = document
        .get_mut("identity")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Rejection::new(Reason::IdentityMemberMissing, "x-rh-identity has no `identity` object"))?;

    let has_org = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|s| !s.trim().is_empty());
    if !has_org(identity.get("org_id")) {
        if let Some(internal_org) = identity.get("internal").and_then(|i| i.get("org_id")).filter(|v| has_org(Some(v))) {
            let internal_org = internal_org.clone();
            identity.insert("org_id".into(), internal_org);
        }
    }

    let type_text = identity.get("type").and_then(Value::as_str).map(str::to_owned);
    let identity_type = type_text.as_deref().and_then(IdentityType::parse);
    let org_id = identity.get("org_id").and_then(Value::as_str).filter(|s| !s.trim().is_empty()).map(str::to_owned);

    if !identity_type.is_some_and(IdentityType::org_optional) {
        if org_id.is_none() {
            return Err(Rejection::new(
                Reason::IdentityOrgIdMissing,
                "x-rh-identity has no org_id (neither identity.org_id nor identity.internal.org_id)",
            ));
        }
        if type_text.is_none() {
            return Err(Rejection::new(Reason::IdentityTypeMissing, "x-rh-identity has no identity.type"));
        }
    }
    let identity_type = match (identity_type, type_text) {
        (Some(t), _) => t,
        (None, Some(unknown)) => {
            return Err(Rejection::new(
                Reason::IdentityTypeUnknown,
                format!(
                    "x-rh-identity type `{}` is not one of User, System, ServiceAccount, Associate, X509",
                    unknown.chars().take(64).collect::<String>()
                ),
            ))
        }
        (None, None) => return Err(Rejection::new(Reason::IdentityTypeMissing, "x-rh-identity has no identity.type")),
    };

    let account_number = identity.get("account_number").and_then(Value::as_str).map(str::to_owned);
    let auth_type = identity.get("auth_type").and_then(Value::as_str).map(str::to_owned);

    if let Err(error) = schema.validate(&document) {
        // Masked: the message names the place and the rule but never echoes identity content.
        return Err(Rejection::new(
            Reason::IdentitySchemaViolation,
            format!(
                "x-rh-identity violates its schema at `{}` (keyword `{}`): {}",
                pointer_or_root(error.instance_path().as_str()),
                error.kind().keyword(),
                error.masked()
            ),
        ));
    }

    Ok(Identity { identity_type, org_id, account_number, auth_type })
}

/// A JSON error's category without its excerpt of the input.
fn classify(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "data error",
        serde_json::error::Category::Eof => "unexpected end",
    }
}

pub(crate) fn pointer_or_root(pointer: &str) -> &str {
    if pointer.is_empty() {
        "/"
    } else {
        pointer
    }
}

/// Encodes an identity document as a header value (standard base64 with padding).
pub fn encode_identity(document: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(document.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> jsonschema::Validator {
        super::super::validate::compile_schema(IDENTITY_SCHEMA, "x-rh-identity").unwrap()
    }

    fn check(document: Value) -> Result<Identity, Rejection> {
        check_identity(Some(encode_identity(&document).as_bytes()), &schema())
    }

    fn reason(document: Value) -> Reason {
        check(document).unwrap_err().reason
    }

    fn user(org: &str) -> Value {
        json!({"identity": {"type": "User", "org_id": org, "account_number": "42", "auth_type": "jwt-auth",
                            "user": {"username": "jdoe", "is_org_admin": true}}})
    }

    #[test]
    fn accepts_a_user_and_keeps_only_safe_fields() {
        let identity = check(user("12345")).unwrap();
        assert_eq!(
            identity,
            Identity {
                identity_type: IdentityType::User,
                org_id: Some("12345".into()),
                account_number: Some("42".into()),
                auth_type: Some("jwt-auth".into()),
            }
        );
    }

    #[test]
    fn padding_is_optional_and_whitespace_is_ignored() {
        let encoded = encode_identity(&user("1"));
        let unpadded = encoded.trim_end_matches('=');
        assert_ne!(unpadded, encoded, "the sample must need padding for this test to mean anything");
        assert!(check_identity(Some(unpadded.as_bytes()), &schema()).is_ok());
        assert!(check_identity(Some(format!(" {encoded}\n").as_bytes()), &schema()).is_ok());
    }

    #[test]
    fn each_rule_has_its_own_reason() {
        let s = schema();
        assert_eq!(check_identity(None, &s).unwrap_err().reason, Reason::IdentityMissing);
        assert_eq!(check_identity(Some(b"  "), &s).unwrap_err().reason, Reason::IdentityMissing);
        assert_eq!(check_identity(Some(b"not base64!"), &s).unwrap_err().reason, Reason::IdentityNotBase64);
        // URL-safe alphabet is not the standard one.
        assert_eq!(check_identity(Some(b"-_-_"), &s).unwrap_err().reason, Reason::IdentityNotBase64);
        let not_json = base64::engine::general_purpose::STANDARD.encode("{not json");
        assert_eq!(check_identity(Some(not_json.as_bytes()), &s).unwrap_err().reason, Reason::IdentityNotJson);
        assert_eq!(reason(json!({"entitlements": {}})), Reason::IdentityMemberMissing);
        assert_eq!(reason(json!({"identity": "User"})), Reason::IdentityMemberMissing);
        assert_eq!(reason(json!({"identity": {"type": "User", "user": {}}})), Reason::IdentityOrgIdMissing);
        assert_eq!(reason(json!({"identity": {"type": "User", "org_id": " ", "user": {}}})), Reason::IdentityOrgIdMissing);
        assert_eq!(reason(json!({"identity": {"org_id": "1"}})), Reason::IdentityTypeMissing);
        assert_eq!(reason(json!({"identity": {"type": "Robot", "org_id": "1"}})), Reason::IdentityTypeUnknown);
        assert_eq!(reason(json!({"identity": {"type": "User", "org_id": "1"}})), Reason::IdentitySchemaViolation);
    }

    #[test]
    fn org_id_falls_back_to_internal() {
        let identity = check(json!({"identity": {"type": "System", "internal": {"org_id": "777"},
                                                 "system": {"cn": "c87dcb4c-8af1-40dd-878e-60c744edddd0"}}}))
        .unwrap();
        assert_eq!(identity.org_id.as_deref(), Some("777"));
        assert_eq!(identity.identity_type, IdentityType::System);
    }

    #[test]
    fn associate_and_x509_may_lack_org() {
        let associate = check(json!({"identity": {"type": "Associate", "associate": {"email": "a@example.com"}}})).unwrap();
        assert_eq!(associate.org_id, None);
        let x509 = check(json!({"identity": {"type": "X509", "x509": {"subject_dn": "CN=svc"}}})).unwrap();
        assert_eq!(x509.identity_type, IdentityType::X509);
        // Without org and without type, org is what is reported missing first.
        assert_eq!(reason(json!({"identity": {}})), Reason::IdentityOrgIdMissing);
    }

    #[test]
    fn type_specific_members_are_checked_by_the_schema() {
        let system_without_cn = json!({"identity": {"type": "System", "org_id": "1", "system": {}}});
        let rejection = check(system_without_cn).unwrap_err();
        assert_eq!(rejection.reason, Reason::IdentitySchemaViolation);
        assert!(rejection.message.contains("/identity/system"), "{}", rejection.message);
        let service_account = json!({"identity": {"type": "ServiceAccount", "org_id": "1",
                                                  "service_account": {"client_id": "b69eaf9e", "username": "svc"}}});
        assert!(check(service_account).is_ok());
        let without_client = json!({"identity": {"type": "ServiceAccount", "org_id": "1", "service_account": {}}});
        assert_eq!(reason(without_client), Reason::IdentitySchemaViolation);
    }

    #[test]
    fn rejections_never_echo_identity_content() {
        let secretish = json!({"identity": {"type": "System", "org_id": "1",
                                            "system": {"cn": "", "cert_type": "TOPSECRET-CERT"}}});
        let rejection = check(secretish).unwrap_err();
        assert!(!rejection.message.contains("TOPSECRET"), "{}", rejection.message);
        let not_json = base64::engine::general_purpose::STANDARD.encode("{\"identity\": TOPSECRET");
        let rejection = check_identity(Some(not_json.as_bytes()), &schema()).unwrap_err();
        assert!(!rejection.message.contains("TOPSECRET"), "{}", rejection.message);
    }
}
