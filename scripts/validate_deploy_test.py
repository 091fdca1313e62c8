#!/usr/bin/env python3
"""Tests of scripts/validate_deploy.py: every held-out bad manifest in tests/deploy/bad/ must be
rejected with the right location, path and reason, the good ones in tests/deploy/good/ and the
real deploy/ must pass. The files with a NUL byte and with invalid UTF-8 are written at run time
(into a temporary folder) rather than kept in the repository.

Run with `scripts/validate-deploy.sh --test` (it provides the venv). Prints one line per test and
closes with `N passed, N failed`; exits 1 when a test fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import sys
import tempfile
import traceback

sys.dont_write_bytecode = True  # no scripts/__pycache__ in the work tree
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import validate_deploy as vd  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "deploy"
VALIDATOR = vd.DeployValidator(ROOT, vd.KUBERNETES_VERSION)


def problems_of(path: str | pathlib.Path, validator: vd.DeployValidator = VALIDATOR) -> list[vd.Problem]:
    problems, _, _ = validator.run([str(path)])
    return problems


def expect_only(path: str, *expected: tuple[str, str, str]) -> None:
    """The file's problems are exactly `expected`: (where, path, part of the message) each."""
    problems = problems_of(path)
    described = "\n  ".join(map(str, problems)) or "(none)"
    assert len(problems) == len(expected), f"{len(expected)} problem(s) expected, got:\n  {described}"
    for where, json_path, message in expected:
        matches = [p for p in problems if p.where == where and p.path == json_path and message in p.message]
        assert matches, f"no problem {where}: {json_path}: ...{message}... among:\n  {described}"


def bad(name: str) -> str:
    return f"tests/deploy/bad/{name}"


# ------------------------------------------------------------------ Kubernetes kinds


def test_unknown_field_in_deployment():
    expect_only(
        bad("deployment-unknown-field.yaml"),
        (
            bad("deployment-unknown-field.yaml") + ": Deployment typo",
            "spec.template.spec.containers[0].imagePullPolcy",
            "unknown field (did you mean 'imagePullPolicy'?)",
        ),
    )


def test_removed_api_has_no_schema():
    expect_only(
        bad("removed-api.yaml"),
        (bad("removed-api.yaml") + ": Deployment removed", "", "no schema for extensions/v1beta1 Deployment"),
    )


def test_missing_name():
    expect_only(
        bad("missing-name.yaml"),
        (bad("missing-name.yaml") + ": ConfigMap (unnamed)", "metadata.name", "required"),
    )


# ------------------------------------------------------------------ custom kinds


def test_clowdapp_partitions_wrong_type():
    expect_only(
        bad("clowdapp-partitions-string.yaml"),
        (
            bad("clowdapp-partitions-string.yaml") + ": ClowdApp wrong-type",
            "spec.kafkaTopics[1].partitions",
            "not of type integer",
        ),
    )


def test_clowdapp_unknown_spec_key():
    expect_only(
        bad("clowdapp-unknown-spec-key.yaml"),
        (
            bad("clowdapp-unknown-spec-key.yaml") + ": ClowdApp unknown-key",
            "spec.kafkaTopic",
            "did you mean 'kafkaTopics'",
        ),
    )


def test_clowdapp_database_version_enum():
    expect_only(
        bad("clowdapp-database-version.yaml"),
        (
            bad("clowdapp-database-version.yaml") + ": ClowdApp old-postgres",
            "spec.database.version",
            "11 is not one of",
        ),
    )


def test_clowdapp_probe_checked_by_the_kubernetes_definition():
    expect_only(
        bad("clowdapp-probe-port.yaml"),
        (
            bad("clowdapp-probe-port.yaml") + ": ClowdApp probe",
            "spec.deployments[0].podSpec.livenessProbe.httpGet.port",
            "not of type string or integer",
        ),
    )


def test_clowdapp_init_container_is_clowders_type():
    expect_only(
        bad("clowdapp-initcontainer-unknown-field.yaml"),
        (
            bad("clowdapp-initcontainer-unknown-field.yaml") + ": ClowdApp init",
            "spec.deployments[0].podSpec.initContainers[0].resources",
            "unknown field",
        ),
    )


def test_servicemonitor_interval_type():
    expect_only(
        bad("servicemonitor-interval-number.yaml"),
        (
            bad("servicemonitor-interval-number.yaml") + ": ServiceMonitor interval",
            "spec.endpoints[0].interval",
            "not of type string",
        ),
    )


def test_prometheusrule_record_and_alert():
    expect_only(
        bad("prometheusrule-record-and-alert.yaml"),
        (
            bad("prometheusrule-record-and-alert.yaml") + ": PrometheusRule both",
            "spec.groups[0].rules[0]",
            "exactly one of record, alert",
        ),
    )


def test_multi_document_file_names_the_document():
    expect_only(
        bad("kafka-topics-multi-document.yaml"),
        (
            bad("kafka-topics-multi-document.yaml") + " (document 3): KafkaTopic platform.sample.three",
            "spec.partitions",
            "less than the minimum of 1",
        ),
    )


def test_generated_kafka_topics_pass():
    problems, oks, _ = VALIDATOR.run(["tests/deploy/good/kafka-topics.yaml"])
    assert not problems, "\n".join(map(str, problems))
    assert len(oks) == 2 and all("KafkaTopic platform.event-router." in line for line in oks), oks


# ------------------------------------------------------------------ the OpenShift Template


def test_undeclared_template_parameter():
    where = bad("template-undeclared-parameter.yaml") + ": Template undeclared"
    expect_only(
        bad("template-undeclared-parameter.yaml"),
        (where, "objects[0].spec.envName", "${ENV_NAM} is used but not declared"),
        (where, "parameters[0]", "ENV_NAME is declared but never used"),
    )


def test_unused_template_parameter():
    expect_only(
        bad("template-unused-parameter.yaml"),
        (
            bad("template-unused-parameter.yaml") + ": Template unused",
            "parameters[1]",
            "MIN_REPLICAS is declared but never used",
        ),
    )


def test_json_parameter_must_be_json():
    path = bad("template-json-parameter.yaml")
    expect_only(
        path,
        (
            path + ": Template json-parameter",
            "objects[0].spec.deployments[0].minReplicas",
            "needs a JSON value",
        ),
        (path + ": ClowdApp json-parameter", "spec.deployments[0].minReplicas", "not of type integer"),
    )


def test_template_substitution():
    problems, oks, _ = VALIDATOR.run(["tests/deploy/good/template-substitution.yaml"])
    assert not problems, "\n".join(map(str, problems))
    doc = vd.load_documents(FIXTURES / "good" / "template-substitution.yaml")[0]
    problems, objects = VALIDATOR.expand_template(doc, "t")
    assert not problems, problems
    deployment = objects[0]
    assert deployment["spec"]["replicas"] == 3, "${{REPLICAS}} must yield the integer 3"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "quay.io/example/app:sample-tag", container["image"]
    assert container["env"][0]["value"] == "a" * 16, container["env"]


def test_template_wrapper_shape():
    doc = {
        "apiVersion": "template.openshift.io/v1",
        "kind": "Template",
        "metadata": {"name": "t"},
        "objects": [],
        "parameters": [{"name": "bad-name", "value": 2}],
        "extra": True,
    }
    problems, objects = VALIDATOR.expand_template(doc, "t")
    paths = {p.path for p in problems}
    assert paths == {"extra", "objects", "parameters[0].name", "parameters[0].value"}, problems
    assert objects == []


# ------------------------------------------------------------------ reading files


def test_duplicate_key_rejected():
    expect_only(
        bad("duplicate-key.yaml"),
        (bad("duplicate-key.yaml"), "", "duplicate key 'LOG_FORMAT' (first on line 7)"),
    )


def test_not_a_manifest():
    expect_only(bad("not-a-manifest.yaml"), (bad("not-a-manifest.yaml"), "", "not a Kubernetes manifest"))


def test_nul_byte_and_invalid_utf8():
    with tempfile.TemporaryDirectory() as folder:
        nul = pathlib.Path(folder, "nul.yaml")
        nul.write_bytes(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\0\n")
        latin1 = pathlib.Path(folder, "latin1.yaml")
        latin1.write_bytes(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: caf\xe9\n")
        notes = pathlib.Path(folder, "notes.txt")
        notes.write_text("not a manifest\n")
        problems = {pathlib.Path(p.where).name: p for p in problems_of(folder)}
    assert set(problems) == {"nul.yaml", "latin1.yaml", "notes.txt"}, problems
    assert "NUL byte at offset" in problems["nul.yaml"].message, problems["nul.yaml"]
    assert "not valid UTF-8: byte offset 52" in problems["latin1.yaml"].message, problems["latin1.yaml"]
    assert "not a manifest (.yaml, .yml or .json)" in problems["notes.txt"].message, problems["notes.txt"]


def test_timestamps_stay_strings():
    docs = vd.load_documents(FIXTURES / "good" / "kafka-topics.yaml")
    assert len(docs) == 2
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder, "date.yaml")
        path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: d\ndata:\n  SINCE: 2024-01-01\n")
        assert vd.load_documents(path)[0]["data"]["SINCE"] == "2024-01-01"
        assert not problems_of(path)


# ------------------------------------------------------------------ CRD_DIR / CLOWDAPP_CRD


def test_crd_dir_replaces_the_hand_written_schema():
    validator = vd.DeployValidator(ROOT, vd.KUBERNETES_VERSION, [FIXTURES / "crds" / "kafkatopic.crd.yaml"])
    problems, oks, _ = validator.run(["tests/deploy/good/kafka-topics.yaml"])
    assert not problems, problems
    assert all("[CRD kafkatopics.kafka.strimzi.io from" in line for line in oks), oks
    problems = problems_of(bad("kafka-topics-multi-document.yaml"), validator)
    assert [(p.path, p.message) for p in problems] == [
        ("spec.partitions", "0 is less than the minimum of 1")
    ], problems
    topic = {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaTopic",
        "metadata": {"name": "t", "labelz": {}},
        "spec": {"topicName": None, "retention": "7d", "partition": 3, "config": {"any": {"thing": 1}}},
    }
    problems, _ = validator.check_object(topic, "x")
    assert sorted(p.path for p in problems) == ["metadata.labelz", "spec.partition"], problems
    topic["spec"]["retention"] = 1.5
    problems, _ = validator.check_object(topic, "x")
    assert "spec.retention" in {p.path for p in problems}, problems


def test_clowdapp_crd_must_hold_a_clowdapp():
    try:
        vd.DeployValidator(ROOT, vd.KUBERNETES_VERSION, [FIXTURES / "crds" / "kafkatopic.crd.yaml"], True)
    except vd.SetupError as e:
        assert "no cloud.redhat.com/v1alpha1 ClowdApp" in str(e)
    else:
        raise AssertionError("a CLOWDAPP_CRD without ClowdApp was accepted")


def test_crd_conversion():
    converted = vd.crd_to_json_schema(
        {
            "type": "object",
            "properties": {
                "a": {"type": "string", "nullable": True},
                "b": {"x-kubernetes-int-or-string": True},
                "c": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "properties": {"d": {"type": "integer"}},
                },
                "e": {"type": "integer", "minimum": 0, "exclusiveMinimum": True},
            },
        }
    )
    assert converted["additionalProperties"] is False
    assert converted["properties"]["a"]["type"] == ["string", "null"]
    assert converted["properties"]["b"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert "additionalProperties" not in converted["properties"]["c"]
    assert converted["properties"]["e"] == {"type": "integer", "exclusiveMinimum": 0}


# ------------------------------------------------------------------ the real deploy/ and the CLI


def test_schemas_say_where_they_come_from():
    for path in sorted((ROOT / "deploy" / "schemas").glob("*.json")):
        schema = json.loads(path.read_text())
        assert list(schema)[:2] == ["$schema", "$comment"], path
        assert "Hand-written" in schema["$comment"], path
    assert {f for f in vd.CUSTOM_SCHEMAS.values()} | {vd.TEMPLATE_SCHEMA} == {
        p.name for p in (ROOT / "deploy" / "schemas").glob("*.json")
    }


def test_real_deploy_passes_and_every_manifest_is_seen():
    problems, oks, files = VALIDATOR.run(vd.SCANNED)
    assert not problems, "\n".join(map(str, problems))
    expected = sorted(p for p in (ROOT / "deploy" / "kubernetes").rglob("*") if p.is_file())
    assert files == len(expected) + 1, f"{files} files read, {len(expected) + 1} expected"
    for kind in (
        "Template",
        "ClowdApp",
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "PrometheusRule",
        "ServiceMonitor",
        "Secret",
    ):
        assert any(f": {kind} " in line for line in oks), f"no {kind} validated: {oks}"


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = vd.main(["--root", str(ROOT), *args])
    return code, out.getvalue(), err.getvalue()


def test_cli_exit_codes_and_output():
    code, out, err = run_cli()
    assert code == 0 and not err, (code, err)
    _, oks, _ = VALIDATOR.run(vd.SCANNED)
    assert out.splitlines()[:-1] == oks and "valid (Kubernetes" in out.splitlines()[-1], out
    code, out, err = run_cli(bad("clowdapp-probe-port.yaml"))
    assert code == 1, code
    assert (
        "tests/deploy/bad/clowdapp-probe-port.yaml: ClowdApp probe: "
        "spec.deployments[0].podSpec.livenessProbe.httpGet.port: 9000.5 is not of type string or integer\n"
    ) in err, err
    code, out, err = run_cli("--kubernetes-version", "1.5")
    assert code == 2 and "bundles Kubernetes" in err, (code, err)


def test_clowdapp_crd_from_environment():
    saved = os.environ.get("CLOWDAPP_CRD")
    os.environ["CLOWDAPP_CRD"] = str(FIXTURES / "crds" / "kafkatopic.crd.yaml")
    try:
        code, _, err = run_cli()
    finally:
        if saved is None:
            del os.environ["CLOWDAPP_CRD"]
        else:
            os.environ["CLOWDAPP_CRD"] = saved
    assert code == 2 and "holds no cloud.redhat.com/v1alpha1 ClowdApp CRD" in err, (code, err)


def main() -> int:
    tests = [(name, fn) for name, fn in globals().items() if name.startswith("test_") and callable(fn)]
    failed = 0
    for name, fn in tests:
        try:
            fn()
        except Exception:  # noqa: BLE001 - a test that raises anything has failed
            failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}")
        else:
            print(f"ok   {name}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
