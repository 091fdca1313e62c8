#!/usr/bin/env python3
"""The Python baseline of `make bench`: a straightforward consumer doing what event-router does.

It checks every message as the service does (src/envelope/): the `x-rh-identity` header
(standard base64, padding optional, of a JSON object with an `identity` object; `org_id` filled
from `identity.internal.org_id`; an org id and a known type unless the type is Associate or X509;
the whole document valid against api/event/x-rh-identity.header.json), the
`x-rh-insights-request-id` header (non-empty UTF-8, at most 256 bytes), and the value (at most
1 MiB, JSON, valid against the topic's schema with formats asserted). A valid message becomes
the row its handler writes (src/handlers/) plus its inbox row in `processed_messages` (the
straightforward inbox, a row per message; the service keeps a run per partition and
transaction since migration 0012, bench/README.md section 26); an invalid one, or a progress report whose stage contradicts its progress (the handler's own rule),
is counted as rejected.

Messages are written in batches: every --batch messages, when a batch is still not full after
100 ms of waiting, and at the end, the rows go in with one `executemany` per table in one
transaction; after the database commit the Kafka offsets are committed synchronously.

Validators (the topics' and the identity header's) are compiled once, at the start. With
--identity-cache it also takes the service's other shortcut (src/envelope/identity.rs): a header
that passed is remembered, by its raw bytes, with the org id it gave, so each distinct header is
decoded and validated once (at most 4,096 remembered, forgotten all at once when full, as in the
service). `make bench` runs it both ways; with the cache it is the fair peer.

Stops after --expect messages (valid and invalid) and prints one JSON line on stdout:
{"messages": N, "seconds": S, "cpu_seconds": C, "inserted": I, "rejected": R}, timed (and its
own CPU time counted) from the first message received (after the group join) to the commit of
the last batch.

    python consumer.py --brokers 127.0.0.1:9092 --group bench-python \
        --topics platform.event-router.todo-created,platform.event-router.host-status-changed \
        --database-url postgres://postgres@127.0.0.1:5432/bench --expect 20000 --schemas api/event
"""

import argparse
import base64
import binascii
import hashlib
import json
import struct
import sys
import time
from pathlib import Path

import psycopg
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer
from jsonschema.validators import validator_for
from psycopg.types.json import Jsonb

IDENTITY_HEADER = "x-rh-identity"
REQUEST_ID_HEADER = "x-rh-insights-request-id"
MAX_REQUEST_ID_BYTES = 256  # MAX_REQUEST_ID_LEN in src/envelope/mod.rs
MAX_PAYLOAD_BYTES = 1024 * 1024  # DEFAULT_MAX_PAYLOAD_BYTES in src/envelope/validate.rs
IDENTITY_TYPES = {"User", "System", "ServiceAccount", "Associate", "X509"}
ORG_OPTIONAL = {"Associate", "X509"}
IDLE_FLUSH_SECONDS = 0.1
IDENTITY_CACHE_CAPACITY = 4096  # IDENTITY_CACHE_CAPACITY in src/envelope/validate.rs

# The statements of src/handlers/*.rs and src/store/mod.rs (the inbox).
INSERT_TODO = """
    INSERT INTO todos (id, title, description, org_id, request_id) VALUES (%s, %s, %s, %s, %s)
    ON CONFLICT (id) DO NOTHING"""
UPSERT_HOST_STATUS = """
    INSERT INTO host_statuses (host_id, cluster_id, status, status_info, validations, updated_at, org_id, request_id)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (host_id) DO UPDATE SET
        cluster_id = EXCLUDED.cluster_id, status = EXCLUDED.status, status_info = EXCLUDED.status_info,
        validations = EXCLUDED.validations, updated_at = EXCLUDED.updated_at,
        org_id = EXCLUDED.org_id, request_id = EXCLUDED.request_id
    WHERE host_statuses.updated_at <= EXCLUDED.updated_at"""
INSERT_PROGRESS = """
    INSERT INTO cluster_install_progress (cluster_id, stage, progress, hosts, org_id, request_id)
    VALUES (%s, %s, %s, %s, %s, %s)"""
INSERT_INBOX = """
    INSERT INTO processed_messages (topic, kafka_partition, kafka_offset, fingerprint, request_id, org_id)
    VALUES (%s, %s, %s, %s, %s, %s)
    ON CONFLICT (topic, kafka_partition, kafka_offset) DO UPDATE
        SET fingerprint = EXCLUDED.fingerprint, request_id = EXCLUDED.request_id,
            org_id = EXCLUDED.org_id, processed_at = now()
        WHERE processed_messages.fingerprint <> EXCLUDED.fingerprint"""


class Rejected(Exception):
    """The message fails a check; it is counted, not written."""


def compile_schema(path):
    schema = json.loads(path.read_text())
    cls = validator_for(schema)
    cls.check_schema(schema)
    # Formats are annotations only unless a format checker is given.
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def reject_constant(name):
    raise ValueError(f"{name} is not JSON")  # json accepts NaN and Infinity; serde_json does not


def parse_json(data):
    return json.loads(data, parse_constant=reject_constant)


def header(headers, name):
    """The first header named `name`, ignoring case (producers differ), as the service does."""
    for key, value in headers or ():
        if key.lower() == name:
            return value
    return None


def non_blank(value):
    return isinstance(value, str) and value.strip() != ""


def check_identity(raw, schema):
    """The org id of a valid x-rh-identity header (None for Associate and X509 without one)."""
    raw = (raw or b"").strip()
    if not raw:
        raise Rejected("identity missing")
    try:
        decoded = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
        document = parse_json(decoded)
    except (binascii.Error, ValueError) as e:
        raise Rejected("identity not base64 JSON") from e
    identity = document.get("identity") if isinstance(document, dict) else None
    if not isinstance(identity, dict):
        raise Rejected("identity member missing")
    if not non_blank(identity.get("org_id")):
        internal = identity.get("internal")
        if isinstance(internal, dict) and non_blank(internal.get("org_id")):
            identity["org_id"] = internal["org_id"]
    identity_type = identity.get("type")
    if not isinstance(identity_type, str):
        identity_type = None
    org_id = identity.get("org_id") if non_blank(identity.get("org_id")) else None
    if identity_type not in ORG_OPTIONAL and (org_id is None or identity_type is None):
        raise Rejected("identity org_id or type missing")
    if identity_type not in IDENTITY_TYPES:
        raise Rejected("identity type unknown")
    if not schema.is_valid(document):
        raise Rejected("identity schema violation")
    return org_id


class IdentityCache:
    """check_identity, remembering the org id of each header that passed, by its raw bytes."""

    def __init__(self, schema):
        self.schema = schema
        self.checked = {}

    def check(self, raw):
        if raw is None:
            return check_identity(raw, self.schema)
        try:
            return self.checked[raw]
        except KeyError:
            pass
        org_id = check_identity(raw, self.schema)
        if len(self.checked) >= IDENTITY_CACHE_CAPACITY:
            self.checked.clear()
        self.checked[raw] = org_id
        return org_id


def check_request_id(raw):
    try:
        text = raw.decode("utf-8").strip() if raw is not None else ""
    except UnicodeDecodeError:
        text = ""
    if not text or len(text.encode("utf-8")) > MAX_REQUEST_ID_BYTES:
        raise Rejected("request id missing")
    return text


def fingerprint(message):
    """SHA-256 of key, value and timestamp, as RawMessage::fingerprint in src/message.rs."""
    digest = hashlib.sha256()
    for part in (message.key(), message.value()):
        if part is None:
            digest.update(b"\0")
        else:
            digest.update(b"\1" + struct.pack(">Q", len(part)))
            digest.update(part)
    kind, timestamp = message.timestamp()
    digest.update(struct.pack(">q", -1 if kind == TIMESTAMP_NOT_AVAILABLE else timestamp))
    return digest.digest()


class Batch:
    """Rows of the valid messages since the last commit, per table."""

    def __init__(self):
        self.messages = 0
        self.todos = []
        self.host_statuses = []
        self.progress = []
        self.inbox = []

    def add(self, key, payload, org_id, request_id):
        if key == "todo-created":
            self.todos.append((payload["id"], payload["title"], payload["description"], org_id, request_id))
        elif key == "host-status-changed":
            self.host_statuses.append((
                payload["host_id"], payload["cluster_id"], payload["status"], payload["status_info"],
                Jsonb(payload.get("validations", [])), payload["updated_at"], org_id, request_id,
            ))
        elif key == "cluster-install-progressed":
            stage, progress = payload["stage"], payload["progress"]
            # The handler's own rule (stage_progress_mismatch).
            if (stage == "installed" and progress != 100) or (stage == "preparing" and progress != 0):
                raise Rejected("stage_progress_mismatch")
            self.progress.append((payload["cluster_id"], stage, progress, Jsonb(payload["hosts"]), org_id, request_id))
        else:
            raise Rejected(f"no handler for {key}")

    def write(self, conn):
        """All rows in one transaction, one executemany per table."""
        with conn.cursor() as cur:
            for statement, rows in (
                (INSERT_INBOX, self.inbox),
                (INSERT_TODO, self.todos),
                (UPSERT_HOST_STATUS, self.host_statuses),
                (INSERT_PROGRESS, self.progress),
            ):
                if rows:
                    cur.executemany(statement, rows)
        conn.commit()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topics", required=True, help="comma-separated topics named <prefix>.<key>")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--expect", type=int, required=True, help="stop after this many messages")
    parser.add_argument("--schemas", type=Path, required=True, help="folder with <key>.event.json")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--identity-cache", action="store_true",
                        help="check each distinct x-rh-identity header once, as the service does")
    parser.add_argument("--idle-timeout", type=float, default=120.0,
                        help="give up (exit 1) after this many seconds without a message")
    args = parser.parse_args()
    if args.expect < 1 or args.batch < 1:
        parser.error("--expect and --batch must be at least 1")

    # Validators are compiled once; a topic is <prefix>.<key>, its schema <key>.event.json.
    keys = {}
    validators = {}
    for topic in filter(None, (t.strip() for t in args.topics.split(","))):
        key = topic.rsplit(".", 1)[-1]
        keys[topic] = key
        validators[topic] = compile_schema(args.schemas / f"{key}.event.json")
    identity_schema = compile_schema(args.schemas / "x-rh-identity.header.json")
    if args.identity_cache:
        identity_check = IdentityCache(identity_schema).check
    else:
        def identity_check(raw):
            return check_identity(raw, identity_schema)
    if any("date-time" not in v.format_checker.checkers for v in validators.values()):
        sys.exit("the date-time format is not asserted: install rfc3339-validator")

    conn = psycopg.connect(args.database_url)
    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe(list(keys))

    seen = inserted = rejected = 0
    batch = Batch()
    started = started_cpu = None
    last_message = time.monotonic()

    def flush():
        nonlocal batch, inserted
        if batch.messages:
            batch.write(conn)
            consumer.commit(asynchronous=False)
            inserted += len(batch.inbox)
        batch = Batch()

    try:
        while seen < args.expect:
            wanted = min(args.batch - batch.messages, args.expect - seen)
            # Returns once `wanted` messages are there, or after 100 ms with what there is.
            messages = consumer.consume(num_messages=wanted, timeout=IDLE_FLUSH_SECONDS)
            if not messages and time.monotonic() - last_message > args.idle_timeout:
                sys.exit(f"no message for {args.idle_timeout:.0f} s after {seen} of {args.expect}")
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.fatal():
                        raise SystemExit(f"kafka: {error}")
                    print(f"kafka: {error}", file=sys.stderr)
                    continue
                if started is None:
                    started, started_cpu = time.perf_counter(), time.process_time()
                last_message = time.monotonic()
                seen += 1
                batch.messages += 1
                topic = message.topic()
                try:
                    headers = message.headers()
                    org_id = identity_check(header(headers, IDENTITY_HEADER))
                    request_id = check_request_id(header(headers, REQUEST_ID_HEADER))
                    value = message.value()
                    if value is None or len(value) > MAX_PAYLOAD_BYTES:
                        raise Rejected("payload missing or too large")
                    try:
                        payload = parse_json(value)
                    except ValueError as e:
                        raise Rejected("payload not JSON") from e
                    if not validators[topic].is_valid(payload):
                        raise Rejected("schema violation")
                    batch.add(keys[topic], payload, org_id, request_id)
                except Rejected:
                    rejected += 1
                    continue
                batch.inbox.append((topic, message.partition(), message.offset(), fingerprint(message), request_id, org_id))
            # A full batch, the last one, or a batch that 100 ms of waiting did not fill.
            if batch.messages >= args.batch or seen >= args.expect or len(messages) < wanted:
                flush()
        flush()
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - started_cpu
    finally:
        consumer.close()
        conn.close()

    print(json.dumps({"messages": seen, "seconds": round(seconds, 6), "cpu_seconds": round(cpu_seconds, 6),
                      "inserted": inserted, "rejected": rejected}))


if __name__ == "__main__":
    main()
