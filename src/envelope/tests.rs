use super::*;
use crate::config::Config;
use crate::message::{Bytes, Header, HeaderProblem};
use serde_json::json;

fn validators() -> Validators {
    let config = Config::from_env(&[][..]).unwrap();
    Validators::compile(&config.topics).unwrap()
}

fn message(key: &str, payload: &[u8], headers: &[(&str, &[u8])]) -> RawMessage {
    RawMessage {
        topic: format!("platform.event-router.{key}").into(),
        partition: 0,
        offset: 0,
        key: Some(Bytes::from_static(b"k")),
        payload: Some(Bytes::copy_from_slice(payload)),
        headers: headers.iter().map(|(k, v)| Header { key: (*k).into(), value: Some(Bytes::copy_from_slice(v)) }).collect(),
        timestamp_ms: None,
        header_problem: None,
    }
}

fn valid_headers() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (IDENTITY_HEADER, identity::encode_identity(&samples::user_identity("12345")).into_bytes()),
        (REQUEST_ID_HEADER, b"req-1".to_vec()),
    ]
}

/// Sample payload `n` of the topic `key`, from its schema's examples.
fn sample(key: &str, n: u64) -> Value {
    let topic = crate::topics::TopicSchema::find(key).unwrap();
    samples::TopicSamples::new(topic.schema, topic.examples).payload(n)
}

fn open_payload(key: &str, payload: &Value) -> Result<Checked, Rejection> {
    let headers = valid_headers();
    let borrowed: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    open(&message(key, payload.to_string().as_bytes(), &borrowed), &validators()).result
}

#[test]
fn every_topic_accepts_its_examples_and_their_variations() {
    for schema in crate::topics::REGISTRY {
        for n in [0, 1, 2, 3, 1_000_003, u64::MAX] {
            let payload = sample(schema.key, n);
            let checked = open_payload(schema.key, &payload).unwrap_or_else(|e| panic!("{} sample {n}: {e}", schema.key));
            assert_eq!(checked.schema.key, schema.key);
            assert_eq!(checked.request_id, "req-1");
            assert_eq!(checked.identity.org_id.as_deref(), Some("12345"));
        }
    }
}

fn violation(key: &str, payload: Value) -> String {
    let rejection = open_payload(key, &payload).unwrap_err();
    assert_eq!(rejection.reason, Reason::SchemaViolation, "{rejection}");
    rejection.message
}

#[test]
fn todo_created_schema_rules() {
    let too_long = "x".repeat(257);
    let message = violation("todo-created", json!({"id": 1, "title": too_long, "description": "d"}));
    assert!(message.starts_with("topic platform.event-router.todo-created: at `/title` (keyword `maxLength`)"), "{message}");
    let message = violation("todo-created", json!({"id": -1, "title": "t", "description": "d"}));
    assert!(message.contains("at `/id` (keyword `minimum`)"), "{message}");
    let message = violation("todo-created", json!({"id": 2147483648u64, "title": "t", "description": "d"}));
    assert!(message.contains("(keyword `maximum`)"), "{message}");
    let message = violation("todo-created", json!({"id": 1, "title": "t"}));
    assert!(message.contains("at `/` (keyword `required`)") && message.contains("description"), "{message}");
    let message = violation("todo-created", json!({"id": 1, "title": "t", "description": "d", "extra": true}));
    assert!(message.contains("(keyword `additionalProperties`)"), "{message}");
    let message = violation("todo-created", json!({"id": "1", "title": "t", "description": "x".repeat(4097)}));
    assert!(message.contains("/id") && message.contains("/description"), "all errors are listed: {message}");
}

#[test]
fn host_status_changed_checks_formats_and_enums() {
    let mut payload = sample("host-status-changed", 1);
    payload["host_id"] = json!("not-a-uuid");
    assert!(violation("host-status-changed", payload).contains("at `/host_id` (keyword `format`)"));
    let mut payload = sample("host-status-changed", 1);
    payload["updated_at"] = json!("yesterday");
    assert!(violation("host-status-changed", payload).contains("at `/updated_at` (keyword `format`)"));
    let mut payload = sample("host-status-changed", 1);
    payload["status"] = json!("sleeping");
    assert!(violation("host-status-changed", payload).contains("at `/status` (keyword `enum`)"));
    let mut payload = sample("host-status-changed", 1);
    payload["validations"][1]["status"] = json!("maybe");
    assert!(violation("host-status-changed", payload).contains("at `/validations/1/status` (keyword `enum`)"));
    let mut payload = sample("host-status-changed", 1);
    payload.as_object_mut().unwrap().remove("validations");
    assert!(open_payload("host-status-changed", &payload).is_ok(), "validations is optional");
}

#[test]
fn cluster_install_progressed_checks_ranges_and_min_items() {
    let mut payload = sample("cluster-install-progressed", 1);
    payload["progress"] = json!(101);
    assert!(violation("cluster-install-progressed", payload).contains("at `/progress` (keyword `maximum`)"));
    let mut payload = sample("cluster-install-progressed", 1);
    payload["hosts"] = json!([]);
    assert!(violation("cluster-install-progressed", payload).contains("at `/hosts` (keyword `minItems`)"));
    let mut payload = sample("cluster-install-progressed", 1);
    payload["hosts"][0]["role"] = json!("boss");
    assert!(violation("cluster-install-progressed", payload).contains("at `/hosts/0/role` (keyword `enum`)"));
}

#[test]
fn header_and_body_failures_have_their_own_reasons() {
    let v = validators();
    let identity = identity::encode_identity(&samples::user_identity("1"));
    let body = sample("todo-created", 1).to_string();

    let no_request_id = message("todo-created", body.as_bytes(), &[(IDENTITY_HEADER, identity.as_bytes())]);
    assert_eq!(open(&no_request_id, &v).result.unwrap_err().reason, Reason::RequestIdMissing);

    let both = [(IDENTITY_HEADER, identity.as_bytes()), (REQUEST_ID_HEADER, b"r".as_slice())];
    let not_json = message("todo-created", b"{oops", &both);
    assert_eq!(open(&not_json, &v).result.unwrap_err().reason, Reason::PayloadNotJson);

    let mut no_value = message("todo-created", b"", &both);
    no_value.payload = None;
    assert_eq!(open(&no_value, &v).result.unwrap_err().reason, Reason::PayloadMissing);

    let unknown = message("no-such-topic", body.as_bytes(), &both);
    let rejection = open(&unknown, &v).result.unwrap_err();
    assert_eq!(rejection.reason, Reason::UnknownTopic);
    assert!(rejection.message.contains("platform.event-router.no-such-topic"));

    let bad_identity = message("todo-created", body.as_bytes(), &[(IDENTITY_HEADER, b"%%%"), (REQUEST_ID_HEADER, b"r")]);
    let opened = open(&bad_identity, &v);
    assert_eq!(opened.result.unwrap_err().reason, Reason::IdentityNotBase64);
    assert_eq!(opened.request_id.as_deref(), Some("r"), "the request id is kept for logging a rejection");
}

#[test]
fn header_names_match_ignoring_case() {
    let identity = identity::encode_identity(&samples::user_identity("1"));
    let body = sample("todo-created", 1).to_string();
    let mixed =
        message("todo-created", body.as_bytes(), &[("X-Rh-Identity", identity.as_bytes()), ("X-RH-Insights-Request-Id", b"abc")]);
    let opened = open(&mixed, &validators());
    assert_eq!(opened.result.unwrap().request_id, "abc");
    assert_eq!(opened.request_id, None, "a checked message's request id moved into it");
}

#[test]
fn oversized_request_id_is_refused() {
    let identity = identity::encode_identity(&samples::user_identity("1"));
    let long = "r".repeat(MAX_REQUEST_ID_LEN + 1);
    let body = sample("todo-created", 1).to_string();
    let msg =
        message("todo-created", body.as_bytes(), &[(IDENTITY_HEADER, identity.as_bytes()), (REQUEST_ID_HEADER, long.as_bytes())]);
    assert_eq!(open(&msg, &validators()).result.unwrap_err().reason, Reason::RequestIdInvalid);
}

#[test]
fn the_identity_cache_remembers_only_identities_that_passed_and_stays_bounded() {
    let validators = validators();
    let cache = identity::IdentityCache::new(2);
    let header = |org: &str| identity::encode_identity(&samples::user_identity(org)).into_bytes();
    let first = cache.check(Some(&header("1")), &validators.identity).unwrap();
    let again = cache.check(Some(&header("1")), &validators.identity).unwrap();
    assert_eq!(first, again);
    assert_eq!(first.org_id.as_deref(), Some("1"));
    assert_eq!(cache.len(), 1, "the second check was answered from the cache");

    // A refused header is refused every time and not remembered.
    let mut no_org = samples::user_identity("1");
    no_org["identity"].as_object_mut().unwrap().remove("org_id");
    no_org["identity"]["internal"].as_object_mut().unwrap().remove("org_id");
    let refused = identity::encode_identity(&no_org).into_bytes();
    for _ in 0..2 {
        assert!(cache.check(Some(&refused), &validators.identity).is_err());
    }
    assert_eq!(cache.len(), 1);

    // Full: the cache starts over rather than growing.
    cache.check(Some(&header("2")), &validators.identity).unwrap();
    assert_eq!(cache.len(), 2);
    let third = cache.check(Some(&header("3")), &validators.identity).unwrap();
    assert_eq!(third.org_id.as_deref(), Some("3"));
    assert_eq!(cache.len(), 1);
}

fn with_headers(headers: Vec<Header>) -> RawMessage {
    let body = sample("todo-created", 1).to_string();
    RawMessage { headers, ..message("todo-created", body.as_bytes(), &[]) }
}

fn header(key: &str, value: &[u8]) -> Header {
    Header { key: key.into(), value: Some(Bytes::copy_from_slice(value)) }
}

fn identity_header() -> Vec<u8> {
    identity::encode_identity(&samples::user_identity("1")).into_bytes()
}

#[test]
fn an_identity_or_request_id_given_twice_is_ambiguous() {
    let v = validators();
    let twice = with_headers(vec![
        header("x-rh-identity", &identity_header()),
        header("X-RH-IDENTITY", &identity_header()),
        header(REQUEST_ID_HEADER, b"r"),
    ]);
    assert_eq!(open(&twice, &v).result.unwrap_err().reason, Reason::IdentityDuplicate);
    let twice = with_headers(vec![
        header(IDENTITY_HEADER, &identity_header()),
        header(REQUEST_ID_HEADER, b"r1"),
        header("X-Rh-Insights-Request-Id", b"r2"),
    ]);
    let opened = open(&twice, &v);
    assert_eq!(opened.result.unwrap_err().reason, Reason::RequestIdDuplicate);
    assert_eq!(opened.request_id, None, "neither of two request ids is logged as the message's");
}

#[test]
fn control_characters_in_a_request_id_or_identity_text_are_refused() {
    let v = validators();
    for bad in [&b"a\0b"[..], b"line\nbreak", b"\x1b[31mred"] {
        let msg = with_headers(vec![header(IDENTITY_HEADER, &identity_header()), header(REQUEST_ID_HEADER, bad)]);
        assert_eq!(open(&msg, &v).result.unwrap_err().reason, Reason::RequestIdInvalid, "{bad:?}");
    }
    let not_utf8 = with_headers(vec![header(IDENTITY_HEADER, &identity_header()), header(REQUEST_ID_HEADER, b"\xff\xfe")]);
    assert_eq!(open(&not_utf8, &v).result.unwrap_err().reason, Reason::RequestIdInvalid);

    for member in ["org_id", "account_number", "auth_type"] {
        let mut document = samples::user_identity("1");
        document["identity"][member] = json!("12\u{0}34");
        let msg = with_headers(vec![
            header(IDENTITY_HEADER, identity::encode_identity(&document).as_bytes()),
            header(REQUEST_ID_HEADER, b"r"),
        ]);
        let rejection = open(&msg, &v).result.unwrap_err();
        assert_eq!(rejection.reason, Reason::IdentitySchemaViolation, "{member}");
        assert!(rejection.message.contains(&format!("/identity/{member}")), "{}", rejection.message);
    }
}

#[test]
fn header_problems_found_while_reading_are_rejections() {
    let v = validators();
    let cases = [
        (HeaderProblem::TooMany { count: 100_000 }, Reason::HeadersTooLarge, "100000 headers"),
        (HeaderProblem::TooLarge { bytes: 900_000 }, Reason::HeadersTooLarge, "900000 bytes"),
        (HeaderProblem::NameNotUtf8 { index: 2 }, Reason::HeaderNameNotUtf8, "header #2"),
    ];
    for (problem, reason, says) in cases {
        let mut msg = with_headers(vec![header(IDENTITY_HEADER, &identity_header()), header(REQUEST_ID_HEADER, b"r")]);
        msg.header_problem = Some(problem);
        let rejection = open(&msg, &v).result.unwrap_err();
        assert_eq!(rejection.reason, reason);
        assert!(rejection.message.contains(says), "{}", rejection.message);
    }
}

#[test]
fn deeply_nested_json_is_refused_as_not_json_without_overflowing_the_stack() {
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let msg = RawMessage {
        payload: Some(Bytes::from(nested.into_bytes())),
        ..with_headers(vec![header(IDENTITY_HEADER, &identity_header()), header(REQUEST_ID_HEADER, b"r")])
    };
    let rejection = open(&msg, &validators()).result.unwrap_err();
    assert_eq!(rejection.reason, Reason::PayloadNotJson);
    assert!(rejection.message.contains("recursion limit"), "{}", rejection.message);
}

#[test]
fn a_payload_breaking_its_schema_a_million_times_gets_a_bounded_message() {
    // The todo schema allows no extra members: each of these breaks `additionalProperties`.
    let mut payload = sample("todo-created", 1);
    let object = payload.as_object_mut().unwrap();
    for i in 0..50_000 {
        object.insert(format!("x{i}"), json!(i));
    }
    let started = std::time::Instant::now();
    let rejection = open_payload("todo-created", &payload).unwrap_err();
    assert_eq!(rejection.reason, Reason::SchemaViolation);
    assert!(rejection.message.len() <= crate::envelope::reason::MAX_MESSAGE_LEN, "{}", rejection.message.len());
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn nul_in_payload_strings_and_property_names_is_escaped_in_the_rejection() {
    let payload = json!({"id": 1, "title": "t", "description": "d", "na\u{0}me": "v\u{0}"});
    let rejection = open_payload("todo-created", &payload).unwrap_err();
    assert_eq!(rejection.reason, Reason::SchemaViolation);
    assert!(!rejection.message.contains('\0'), "{}", rejection.message);
    assert!(rejection.message.contains("na\\u{0}me"), "{}", rejection.message);
}

mod properties {
    //! Whatever bytes arrive, opening a message returns a checked message or a rejection: it
    //! never panics, and a rejection's message holds no control character.
    use super::*;
    use proptest::prelude::*;

    fn arbitrary_header() -> impl Strategy<Value = Header> {
        let names = prop_oneof![
            Just("x-rh-identity".to_string()),
            Just("X-Rh-Identity".to_string()),
            Just("x-rh-insights-request-id".to_string()),
            ".{0,24}",
        ];
        let values = prop_oneof![
            Just(Some(identity_header())),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|bytes| Some(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes).into_bytes())),
        ];
        (names, values).prop_map(|(key, value)| Header { key: key.into(), value: value.map(Bytes::from) })
    }

    fn arbitrary_payload() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop_oneof![
            Just(Some(sample("todo-created", 1).to_string().into_bytes())),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256)),
            "\\PC{0,64}".prop_map(|text| Some(json!({"id": 1, "title": text, "description": text}).to_string().into_bytes())),
            proptest::collection::btree_map(".{0,8}", any::<i64>(), 0..8).prop_map(|map| Some(serde_json::to_vec(&map).unwrap())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn opening_never_panics(
            headers in proptest::collection::vec(arbitrary_header(), 0..6),
            payload in arbitrary_payload(),
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
            topic in prop_oneof![Just("todo-created"), Just("host-status-changed"), Just("cluster-install-progressed"), Just("nope")],
        ) {
            let msg = RawMessage { headers, payload: payload.map(Bytes::from), key: key.map(Bytes::from), ..message(topic, b"", &[]) };
            match open(&msg, &VALIDATORS).result {
                Ok(checked) => prop_assert!(!checked.request_id.chars().any(char::is_control)),
                Err(rejection) => prop_assert!(!rejection.message.chars().any(char::is_control)),
            }
        }
    }

    static VALIDATORS: std::sync::LazyLock<Validators> = std::sync::LazyLock::new(validators);
}
