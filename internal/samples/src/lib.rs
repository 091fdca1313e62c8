//! Sample payloads and identities: demo traffic, tests and benchmarks.
//!
//! A topic's samples come from its schema's `examples`, which the topic registry carries, so the
//! demo producer, the test kit and the benchmark send every topic without a list of topics here:
//! adding a topic adds its samples. One crate, not part of the service library.

use serde_json::{json, Value};
use uuid::Uuid;

/// A deterministic UUID from a number, so repeated runs produce comparable data.
pub fn uuid_from(n: u64, salt: u64) -> Uuid {
    Uuid::from_u64_pair(salt, n)
}

/// The sample payloads of one topic, made from its schema's `examples` (the topic registry's
/// `schema` and `examples`): payload `n` is example `n % len` with its identifiers varied by `n`,
/// so `n` messages describe `n` different things and a handler that keys rows by id stores each.
///
/// Identifiers are strings of `format: uuid` and integers named `id` or `*_id`; they change
/// within what the schema allows (an integer stays inside its `minimum`..`maximum`), so a varied
/// sample is as valid as its example. Everything else stays as the example wrote it, which keeps
/// a payload's parts consistent with each other (a stage and its progress, say).
#[derive(Debug, Clone)]
pub struct TopicSamples {
    schema: Value,
    examples: Vec<Value>,
}

impl TopicSamples {
    /// From a topic's schema text and its examples as JSON texts, as the registry holds them.
    ///
    /// # Panics
    /// When the texts are not JSON or there is no example: the build checked both, so this is a
    /// caller passing something other than the registry's entries.
    pub fn new(schema: &str, examples: &[&str]) -> TopicSamples {
        let schema = serde_json::from_str(schema).expect("a topic schema is JSON (checked by the build)");
        let examples: Vec<Value> =
            examples.iter().map(|e| serde_json::from_str(e).expect("an example is JSON (checked by the build)")).collect();
        assert!(!examples.is_empty(), "a topic has at least one example (checked by the build)");
        TopicSamples { schema, examples }
    }

    /// Sample payload number `n`.
    pub fn payload(&self, n: u64) -> Value {
        let mut payload = self.examples[(n % self.examples.len() as u64) as usize].clone();
        vary(&self.schema, &self.schema, "", &mut payload, n);
        payload
    }
}

/// How deep a sample's `$ref` chain may go before it is taken as a loop.
const MAX_REF_HOPS: usize = 16;

/// Follows local `$ref`s (`#/$defs/...`) from `schema` to the schema they name.
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..MAX_REF_HOPS {
        match schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => match root.pointer(pointer) {
                Some(target) => schema = target,
                None => return schema,
            },
            None => return schema,
        }
    }
    schema
}

fn vary(root: &Value, schema: &Value, name: &str, value: &mut Value, n: u64) {
    let schema = resolve(root, schema);
    match value {
        Value::Object(members) => {
            for (member, inner) in members.iter_mut() {
                if let Some(subschema) = schema.get("properties").and_then(|p| p.get(member)) {
                    vary(root, subschema, member, inner, n);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    vary(root, item_schema, name, item, n);
                }
            }
        }
        Value::String(text) if schema.get("format").and_then(Value::as_str) == Some("uuid") => {
            if let Ok(uuid) = Uuid::parse_str(text) {
                *text = vary_uuid(uuid, n).to_string();
            }
        }
        Value::Number(number) if name == "id" || name.ends_with("_id") => {
            if let Some(integer) = number.as_i64() {
                let bound = |keyword: &str| schema.get(keyword).and_then(Value::as_i64);
                *value = Value::from(vary_integer(integer, bound("minimum"), bound("maximum"), n));
            }
        }
        _ => {}
    }
}

/// The example's UUID with `n` mixed into bits that are neither its version nor its variant, so
/// the result is as well-formed as the original, and two originals stay apart for the same `n`.
fn vary_uuid(uuid: Uuid, n: u64) -> Uuid {
    const FREE_LOW_BITS: u128 = (1 << 62) - 1;
    Uuid::from_u128(uuid.as_u128() ^ (u128::from(n) & FREE_LOW_BITS))
}

/// `value + n`, wrapped into `minimum..=maximum`.
fn vary_integer(value: i64, minimum: Option<i64>, maximum: Option<i64>, n: u64) -> i64 {
    let (low, high) = (i128::from(minimum.unwrap_or(i64::MIN)), i128::from(maximum.unwrap_or(i64::MAX)));
    if high < low {
        return value;
    }
    let span = high - low + 1;
    let varied = low + (i128::from(value) - low + i128::from(n)).rem_euclid(span);
    i64::try_from(varied).unwrap_or(value)
}

/// A decoded `x-rh-identity` document for a User in `org_id`.
pub fn user_identity(org_id: &str) -> Value {
    json!({
        "identity": {
            "type": "User",
            "org_id": org_id,
            "account_number": "540155",
            "auth_type": "jwt-auth",
            "internal": {"org_id": org_id},
            "user": {"username": "jdoe", "email": "jdoe@example.com", "is_org_admin": true}
        },
        "entitlements": {"insights": {"is_entitled": true, "is_trial": false}}
    })
}

/// A decoded identity of the given type, with the members its type requires.
pub fn identity_of_type(identity_type: &str, org_id: &str) -> Value {
    let mut identity = json!({"type": identity_type, "org_id": org_id, "auth_type": "cert-auth"});
    let member = match identity_type {
        "User" => ("user", json!({"username": "jdoe"})),
        "System" => ("system", json!({"cn": "c87dcb4c-8af1-40dd-878e-60c744edddd0", "cert_type": "system"})),
        "ServiceAccount" => ("service_account", json!({"client_id": "b69eaf9e-e6a6-4f9e-805e-02987daddfbd", "username": "svc"})),
        "Associate" => ("associate", json!({"email": "associate@example.com"})),
        "X509" => ("x509", json!({"subject_dn": "CN=event-router"})),
        _ => ("unknown", json!({})),
    };
    identity[member.0] = member.1;
    json!({"identity": identity})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn samples() -> TopicSamples {
        let schema = json!({
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 1, "maximum": 3},
                "host_id": {"$ref": "#/$defs/id"},
                "progress": {"type": "integer"},
                "hosts": {"type": "array", "items": {"type": "object", "properties": {"host_id": {"$ref": "#/$defs/id"}}}},
                "status_id": {"type": "string"}
            },
            "$defs": {"id": {"type": "string", "format": "uuid"}}
        });
        let example = json!({
            "id": 2, "host_id": "5b1f8a2e-3c4d-4e5f-8a6b-7c8d9e0f1a2b", "progress": 40,
            "hosts": [{"host_id": "5b1f8a2e-3c4d-4e5f-8a6b-7c8d9e0f1a2b"}, {"host_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f2a3b4c5d"}],
            "status_id": "kept"
        });
        TopicSamples::new(&schema.to_string(), &[&example.to_string()])
    }

    #[test]
    fn sample_zero_is_the_example() {
        let zero = samples().payload(0);
        assert_eq!(zero["id"], 2);
        assert_eq!(zero["host_id"], "5b1f8a2e-3c4d-4e5f-8a6b-7c8d9e0f1a2b");
    }

    #[test]
    fn identifiers_vary_within_their_bounds_and_nothing_else_does() {
        let samples = samples();
        let ids: Vec<i64> = (0..6).map(|n| samples.payload(n)["id"].as_i64().unwrap_or_default()).collect();
        assert_eq!(ids, [2, 3, 1, 2, 3, 1]);
        let one = samples.payload(1);
        assert_eq!((one["progress"].clone(), one["status_id"].clone()), (json!(40), json!("kept")));
        // The same identifier in two places varies the same way; two identifiers stay apart.
        assert_eq!(one["host_id"], one["hosts"][0]["host_id"]);
        assert_ne!(one["hosts"][0]["host_id"], one["hosts"][1]["host_id"]);
        let hosts: std::collections::HashSet<String> = (0..1000).map(|n| samples.payload(n)["host_id"].to_string()).collect();
        assert_eq!(hosts.len(), 1000);
        let varied = Uuid::parse_str(samples.payload(u64::MAX)["host_id"].as_str().unwrap_or_default());
        assert!(varied.is_ok_and(|u| u.get_version_num() == 4 && u.get_variant() == uuid::Variant::RFC4122));
    }
}
