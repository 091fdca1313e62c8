//! Sample payloads and identities for every shipped topic: demo traffic, tests and benchmarks.
//!
//! One crate so the demo producer, the test kit and the benchmark all send the same realistic
//! messages, and a schema change that breaks them shows up in one place; not part of the
//! service library.

use serde_json::{json, Value};
use uuid::Uuid;

/// A deterministic UUID from a number, so repeated runs produce comparable data.
pub fn uuid_from(n: u64, salt: u64) -> Uuid {
    Uuid::from_u64_pair(salt, n)
}

/// A valid `todo-created` payload with id `id`.
pub fn todo_created(id: u32) -> Value {
    json!({
        "id": id,
        "title": format!("Todo number {id}"),
        "description": format!("Created by the sample generator; todo {id} wants doing."),
    })
}

/// A valid `host-status-changed` payload.
pub fn host_status_changed(n: u64) -> Value {
    const STATUSES: [&str; 4] = ["discovering", "known", "installing", "installed"];
    json!({
        "host_id": uuid_from(n, 1).to_string(),
        "cluster_id": uuid_from(n / 8, 2).to_string(),
        "status": STATUSES[(n % 4) as usize],
        "status_info": "Host is ready to be installed",
        "updated_at": "2026-11-23T10:00:00Z",
        "validations": [
            {"id": "has-cpu-cores-for-role", "status": "success", "message": "Sufficient CPU cores"},
            {"id": "ntp-synced", "status": "pending", "message": "Waiting for NTP"}
        ],
    })
}

/// A valid `cluster-install-progressed` payload.
pub fn cluster_install_progressed(n: u64) -> Value {
    json!({
        "cluster_id": uuid_from(n, 3).to_string(),
        "stage": "installing",
        "progress": (n % 100) as i64,
        "hosts": [
            {"host_id": uuid_from(n, 4).to_string(), "role": "master"},
            {"host_id": uuid_from(n, 5).to_string(), "role": "worker"}
        ],
    })
}

/// A valid payload for the topic `key`, varied by `n`.
pub fn payload_for(key: &str, n: u64) -> Option<Value> {
    match key {
        "todo-created" => Some(todo_created((n % i32::MAX as u64) as u32)),
        "host-status-changed" => Some(host_status_changed(n)),
        "cluster-install-progressed" => Some(cluster_install_progressed(n)),
        _ => None,
    }
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
