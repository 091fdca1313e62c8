#!/usr/bin/env python3
"""Validates the Kubernetes manifests under deploy/ offline, without a cluster.

Run it through scripts/validate-deploy.sh, which installs the pinned packages it imports
(kubernetes-validate, PyYAML, jsonschema) into ${CARGO_TARGET_DIR:-target}/deploy-venv.

What is scanned (SCANNED): deploy/clowdapp.yaml and every file under deploy/kubernetes/,
subfolders included. Anything else under deploy/ is not a Kubernetes manifest and is not read:
prometheus/alerts.yaml is a Prometheus rule file (promtool checks it), grafana/ holds dashboards.
A scanned file that is not a manifest (no apiVersion/kind) is an error unless SKIPPED lists it
with a reason.

How each object is checked:
- Kinds of the Kubernetes API (Deployment, Service, ConfigMap, Secret, PodDisruptionBudget, ...):
  against kubernetes-validate's bundled JSON Schema for KUBERNETES_VERSION, in its strict variant
  (an unknown field is an error, as with `kubectl apply --validate=strict`).
- ClowdApp, KafkaTopic, PrometheusRule, ServiceMonitor: against the hand-written schemas in
  deploy/schemas/ (CUSTOM_SCHEMAS). Their embedded Kubernetes types ($refs to
  https://kubernetes.io/api/_definitions.json) resolve to kubernetes-validate's definitions for
  the same KUBERNETES_VERSION. With CRD_DIR set to a folder of CustomResourceDefinition YAML
  files (or CLOWDAPP_CRD to the ClowdApp CRD file), a kind found there is validated against that
  CRD's openAPIV3Schema instead, made strict the same way.
- The OpenShift Template (deploy/clowdapp.yaml): its wrapper against deploy/schemas/template.v1.json;
  every ${X} and ${{X}} used must be declared in parameters and every parameter used. The
  parameters are then substituted as `oc process` does (a required parameter without a value gets
  a sample value, ${{X}} yields the value parsed as JSON) and each object is validated as above.
- Every object needs metadata.name.
YAML is read strictly: UTF-8 only, no NUL byte, no duplicate key in a mapping.

Prints one `ok` line per valid object; each problem as `FILE: KIND NAME: PATH: MESSAGE` on stderr.
Exit status: 0 all valid, 1 a problem found, 2 cannot run (bad arguments, unsupported version).

Usage: validate_deploy.py [--root DIR] [--kubernetes-version X.Y] [PATH ...]
PATHs (files or folders) replace the default SCANNED set.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import pathlib
import re
import sys
from typing import Any, Iterable, Iterator

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import yaml
from referencing import Registry, Resource

# The Kubernetes API version the manifests are checked against; VALIDATE_KUBERNETES_VERSION in
# the environment (or --kubernetes-version) overrides it. It must be one that the pinned
# kubernetes-validate bundles (1.37.0 bundles 1.25 to 1.37). OpenShift lags upstream Kubernetes by
# a few minor versions, so this is not the newest one: a field that only a newer cluster knows
# would be accepted here and rejected by the cluster.
KUBERNETES_VERSION = "1.33"

# Relative to the repository root. Folders are scanned recursively, every file in them.
SCANNED = ("deploy/clowdapp.yaml", "deploy/kubernetes")

# Files under SCANNED that are not Kubernetes manifests, each with the reason it is there.
SKIPPED: dict[str, str] = {}

# apiVersion, kind -> schema file in deploy/schemas/.
CUSTOM_SCHEMAS = {
    ("cloud.redhat.com/v1alpha1", "ClowdApp"): "clowdapp.v1alpha1.json",
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): "kafkatopic.v1beta2.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.v1.json",
}
TEMPLATE_SCHEMA = "template.v1.json"
TEMPLATE_API_VERSIONS = ("template.openshift.io/v1", "v1")

# Values for required template parameters that have none (they are given at `oc process` time).
# Any other such parameter gets "sample-<name>".
SAMPLE_VALUES = {"IMAGE_TAG": "0123abc", "ENV_NAME": "env-sample"}

DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
SKIP_HINT = "; add it to SKIPPED in scripts/validate_deploy.py with a reason if it belongs here"

PARAM_JSON = re.compile(r"\$\{\{([A-Za-z0-9_]+)\}\}")
PARAM_TEXT = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


class SetupError(Exception):
    """The validator cannot run at all (exit 2)."""


class LoadError(Exception):
    """A file cannot be read as YAML."""


@dataclasses.dataclass(frozen=True, order=True)
class Problem:
    where: str  # "deploy/clowdapp.yaml: ClowdApp event-router"
    path: str  # "spec.deployments[0].podSpec", "" for the whole file or object
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.path}: {self.message}" if self.path else f"{self.where}: {self.message}"


# ------------------------------------------------------------------------------------ YAML


class StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key twice in one mapping is an error and timestamps
    stay strings (Kubernetes' YAML-to-JSON conversion keeps them as strings too)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable key: SafeConstructor reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r} (first on line {first})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# A plain `=` is YAML 1.1's value key; Kubernetes reads it as the string "=".
StrictLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def yaml_error_text(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        parts = [p for p in (error.context, error.problem) if p]
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return f"invalid YAML: {where}{', '.join(parts)}"
    return f"invalid YAML: {error}"


def load_documents(path: pathlib.Path) -> list[Any]:
    """Every document of a YAML file (None for an empty one)."""
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise LoadError(f"contains a NUL byte at offset {nul}: not a text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LoadError(f"not valid UTF-8: byte offset {e.start}: {e.reason}") from None
    try:
        return list(yaml.load_all(text, Loader=StrictLoader))
    except yaml.YAMLError as e:
        raise LoadError(yaml_error_text(e)) from None


# ------------------------------------------------------------------------------- JSON paths


def format_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_-]*", str(part)):
            out += ("." if out else "") + str(part)
        else:
            out += f"[{json.dumps(part)}]"
    return out


def short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_names(types: list) -> str:
    """["integer", "null"], "string" -> "integer or string" (null: a missing value, not worth naming)."""
    names = []
    for entry in types:
        for name in entry if isinstance(entry, list) else [entry]:
            if name != "null" and name not in names:
                names.append(name)
    return " or ".join(names) or "null"


def describe(error: jsonschema.ValidationError) -> list[tuple[list, str]]:
    """(path parts, message) for one jsonschema error, pointed at the offending key."""
    path = list(error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        known = list((error.schema.get("properties") or {}).keys())
        patterns = list((error.schema.get("patternProperties") or {}).keys())
        out = []
        for key in error.instance:
            if key in known or any(re.search(p, str(key)) for p in patterns):
                continue
            guess = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            out.append((path + [key], f"unknown field{hint}"))
        if out:
            return out
    if kind == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        if missing:
            return [(path + [missing[0]], "required field is missing")]
    if kind in ("oneOf", "anyOf"):
        options = error.validator_value
        if all(set(o) == {"required"} for o in options):
            names = ", ".join(n for o in options for n in o["required"])
            return [(path, f"exactly one of {names} must be set")]
        context = error.context or []
        if context and all(c.validator == "type" and not c.relative_path for c in context):
            types = type_names([c.validator_value for c in context])
            return [(path, f"{short(error.instance)} is not of type {types}")]
        if context:
            return describe(jsonschema.exceptions.best_match(context))
    if kind == "const":
        return [(path, f"{short(error.instance)} must be {error.validator_value!r}")]
    if kind == "enum":
        return [(path, f"{short(error.instance)} is not one of {short(error.validator_value, 120)}")]
    if kind == "type":
        return [(path, f"{short(error.instance)} is not of type {type_names([error.validator_value])}")]
    message = error.message
    return [(path, message if len(message) <= 200 else message[:197] + "...")]


# ------------------------------------------------------------------------------------ CRDs


def crd_to_json_schema(node: Any) -> Any:
    """A CRD's OpenAPI v3 schema as a JSON Schema that is as strict as the API server with
    field validation: objects with properties are closed unless they preserve unknown fields.
    CEL rules (x-kubernetes-validations) are not evaluated."""
    if isinstance(node, list):
        return [crd_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: crd_to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = crd_to_json_schema(value)
        elif key.startswith("x-kubernetes-") or key in ("nullable", "exclusiveMinimum", "exclusiveMaximum"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(bound) is True and limit in out:
            out[bound] = out.pop(limit)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-embedded-resource")
    if "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    return out


def load_crds(paths: list[pathlib.Path]) -> dict[tuple[str, str], tuple[dict, str]]:
    """(apiVersion, kind) -> (JSON Schema, label) for every version of every CRD in paths."""
    found: dict[tuple[str, str], tuple[dict, str]] = {}
    for path in paths:
        try:
            documents = load_documents(path)
        except (OSError, LoadError) as e:
            raise SetupError(f"{path}: {e}") from None
        for doc in documents:
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            if doc.get("apiVersion") != "apiextensions.k8s.io/v1":
                raise SetupError(f"{path}: only apiextensions.k8s.io/v1 CRDs are supported")
            spec = doc.get("spec") or {}
            for version in spec.get("versions") or []:
                source = (version.get("schema") or {}).get("openAPIV3Schema")
                if not source:
                    continue
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schema = crd_to_json_schema(source)
                # The API server knows these three whatever the CRD's schema says of them.
                schema.setdefault("properties", {}).update(
                    apiVersion={"const": key[0]},
                    kind={"const": key[1]},
                    metadata={
                        "$ref": DEFINITIONS_ID + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
                    },
                )
                schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
                found[key] = (schema, f"CRD {doc.get('metadata', {}).get('name', '?')} from {path}")
    return found


def crd_files_from_environment() -> tuple[list[pathlib.Path], bool]:
    files: list[pathlib.Path] = []
    crd_dir = os.environ.get("CRD_DIR")
    if crd_dir:
        folder = pathlib.Path(crd_dir)
        if not folder.is_dir():
            raise SetupError(f"CRD_DIR={crd_dir} is not a folder")
        files += sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
    clowdapp_crd = os.environ.get("CLOWDAPP_CRD")
    if clowdapp_crd:
        if not pathlib.Path(clowdapp_crd).is_file():
            raise SetupError(f"CLOWDAPP_CRD={clowdapp_crd} is not a file")
        files.append(pathlib.Path(clowdapp_crd))
    return files, bool(clowdapp_crd)


# ------------------------------------------------------------------------------- Validator


class DeployValidator:
    def __init__(
        self,
        root: pathlib.Path,
        kubernetes_version: str,
        crd_files: list[pathlib.Path] = (),
        need_clowdapp_crd: bool = False,
    ):
        self.root = root
        self.schema_dir = root / "deploy" / "schemas"
        bundled = [kv_utils.major_minor(v) for v in kv_utils.all_versions()]
        if kubernetes_version not in bundled:
            raise SetupError(
                f"kubernetes-validate {kubernetes_validate.__version__} bundles Kubernetes "
                f"{bundled[0]} to {bundled[-1]}, not {kubernetes_version}"
            )
        self.kubernetes_version = kubernetes_version
        self.schema_folder = f"kubernetes-json-schema/v{kubernetes_version}.0-local-strict"
        definitions = kv_utils.schema_contents(f"{self.schema_folder}/_definitions.json", kubernetes_version)
        if definitions.get("$id") != DEFINITIONS_ID:
            raise SetupError(f"kubernetes-validate's definitions are not at {DEFINITIONS_ID}")
        self.registry = Resource.from_contents(definitions) @ Registry()
        self.validators: dict[Any, tuple[jsonschema.protocols.Validator, str]] = {}
        self.crds = load_crds(list(crd_files))
        if need_clowdapp_crd and ("cloud.redhat.com/v1alpha1", "ClowdApp") not in self.crds:
            raise SetupError("CLOWDAPP_CRD holds no cloud.redhat.com/v1alpha1 ClowdApp CRD")

    # -- schemas

    def _validator(self, key: Any, schema: dict, label: str):
        if key not in self.validators:
            jsonschema.Draft202012Validator.check_schema(schema)
            self.validators[key] = (jsonschema.Draft202012Validator(schema, registry=self.registry), label)
        return self.validators[key]

    def _own_schema(self, filename: str):
        path = self.schema_dir / filename
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SetupError(f"{path}: {e}") from None
        return self._validator(("file", filename), schema, f"deploy/schemas/{filename}")

    def validator_for(self, api_version: str, kind: str):
        """(validator, label), or None when no schema knows the kind."""
        if (api_version, kind) in self.crds:
            schema, label = self.crds[(api_version, kind)]
            return self._validator(("crd", api_version, kind), schema, label)
        if (api_version, kind) in CUSTOM_SCHEMAS:
            return self._own_schema(CUSTOM_SCHEMAS[(api_version, kind)])
        # kubernetes-validate's file naming: apps/v1 -> apps-v1, policy/v1 -> policy-v1, v1 -> v1.
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        filename = f"{self.schema_folder}/{kind.lower()}-{group_version}.json"
        try:
            schema = kv_utils.schema_contents(filename, self.kubernetes_version)
        except (FileNotFoundError, kv_utils.InvalidSchemaError):
            return None
        return self._validator(
            ("core", api_version, kind), schema, f"Kubernetes {self.kubernetes_version} strict"
        )

    # -- objects

    def check_object(self, doc: Any, where: str) -> tuple[list[Problem], str | None]:
        """Problems of one manifest object, and its `ok` line when it has none."""
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
            return [Problem(where, "", "not a Kubernetes manifest (no apiVersion and kind)")], None
        api_version, kind = str(doc["apiVersion"]), str(doc["kind"])
        metadata = doc.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        where = f"{where}: {kind} {name if isinstance(name, str) and name else '(unnamed)'}"
        found = self.validator_for(api_version, kind)
        if found is None:
            return [
                Problem(
                    where,
                    "",
                    f"no schema for {api_version} {kind}: not in Kubernetes {self.kubernetes_version} "
                    "(removed or misspelt API?) and not in CUSTOM_SCHEMAS of scripts/validate_deploy.py",
                )
            ], None
        validator, label = found
        problems = set()
        for error in validator.iter_errors(doc):
            for parts, message in describe(error):
                problems.add(Problem(where, format_path(parts), message))
        if not (isinstance(name, str) and name):
            problems.add(Problem(where, "metadata.name", "required field is missing"))
        if not problems and label.startswith("Kubernetes"):
            # The same schemas through kubernetes-validate's own entry point, as a cross-check.
            try:
                kubernetes_validate.validate(doc, self.kubernetes_version, strict=True)
            except kv_utils.ValidationError as e:
                problems.add(Problem(where, format_path(e.absolute_path), e.message))
        if problems:
            return sorted(problems), None
        return [], f"ok  {where} [{label}]"

    # -- templates

    def expand_template(self, doc: dict, where: str) -> tuple[list[Problem], list[Any]]:
        """Problems of an OpenShift Template, and its objects with the parameters substituted."""
        name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
        where = f"{where}: Template {name or '(unnamed)'}"
        validator, _ = self._own_schema(TEMPLATE_SCHEMA)
        problems = {
            Problem(where, format_path(p), m) for e in validator.iter_errors(doc) for p, m in describe(e)
        }
        if problems:
            return sorted(problems), []

        parameters = doc.get("parameters") or []
        declared: dict[str, int] = {}
        for index, parameter in enumerate(parameters):
            if parameter["name"] in declared:
                problems.add(
                    Problem(where, f"parameters[{index}].name", f"{parameter['name']} is declared twice")
                )
            declared.setdefault(parameter["name"], index)

        used: dict[str, list[str]] = {}
        for path, text in template_strings(["objects"], doc["objects"]):
            for match in PARAM_JSON.finditer(text):
                used.setdefault(match.group(1), []).append(path)
                if match.group(0) != text:
                    problems.add(Problem(where, path, f"{match.group(0)} must be the whole value"))
            for match in PARAM_TEXT.finditer(PARAM_JSON.sub("", text)):
                used.setdefault(match.group(1), []).append(path)
        for path, text in template_strings(["message"], doc.get("message", "")):
            for match in list(PARAM_JSON.finditer(text)) + list(PARAM_TEXT.finditer(text)):
                used.setdefault(match.group(1), []).append(path)

        for parameter_name, paths in sorted(used.items()):
            if parameter_name not in declared:
                for path in paths:
                    problems.add(
                        Problem(where, path, f"${{{parameter_name}}} is used but not declared in parameters")
                    )
        for parameter_name, index in declared.items():
            if parameter_name not in used:
                problems.add(
                    Problem(where, f"parameters[{index}]", f"{parameter_name} is declared but never used")
                )

        values = {}
        for parameter in parameters:
            value = parameter.get("value", "")
            if not value and parameter.get("generate") == "expression":
                value = sample_from_expression(parameter.get("from", ""))
            if not value and parameter.get("required"):
                value = SAMPLE_VALUES.get(
                    parameter["name"], "sample-" + parameter["name"].lower().replace("_", "-")
                )
            values[parameter["name"]] = value

        def substitute(node: Any, path: list) -> Any:
            if isinstance(node, dict):
                return {substitute(k, path): substitute(v, path + [k]) for k, v in node.items()}
            if isinstance(node, list):
                return [substitute(v, path + [i]) for i, v in enumerate(node)]
            if not isinstance(node, str):
                return node
            whole = PARAM_JSON.fullmatch(node)
            if whole and whole.group(1) in values:
                value = values[whole.group(1)]
                try:
                    return json.loads(value)
                except ValueError:
                    problems.add(
                        Problem(
                            where,
                            format_path(path),
                            f"{node} needs a JSON value, and {whole.group(1)} is {value!r}",
                        )
                    )
                    return value
            return PARAM_TEXT.sub(lambda m: values.get(m.group(1), m.group(0)), node)

        objects = substitute(doc["objects"], ["objects"])
        return sorted(problems), objects

    # -- files

    def check_file(self, path: pathlib.Path, display: str) -> tuple[list[Problem], list[str]]:
        if display in SKIPPED:
            return [], []
        if path.suffix not in MANIFEST_SUFFIXES:
            return [Problem(display, "", "not a manifest (.yaml, .yml or .json)" + SKIP_HINT)], []
        try:
            documents = load_documents(path)
        except OSError as e:
            return [Problem(display, "", f"cannot read: {e}")], []
        except LoadError as e:
            return [Problem(display, "", str(e))], []
        present = [(i, d) for i, d in enumerate(documents) if d is not None]
        if not present:
            return [Problem(display, "", "holds no YAML document")], []
        problems: list[Problem] = []
        oks: list[str] = []
        for index, doc in present:
            where = display if len(documents) == 1 else f"{display} (document {index + 1})"
            if (
                isinstance(doc, dict)
                and doc.get("kind") == "Template"
                and doc.get("apiVersion") in TEMPLATE_API_VERSIONS
            ):
                template_problems, objects = self.expand_template(doc, where)
                problems += template_problems
                for object_index, obj in enumerate(objects):
                    object_where = where if len(objects) == 1 else f"{where} objects[{object_index}]"
                    found, ok = self.check_object(obj, object_where)
                    problems += found
                    oks += [ok] if ok else []
                if not template_problems:
                    name = doc["metadata"]["name"]
                    oks.append(
                        f"ok  {where}: Template {name} [parameters declared and used; {TEMPLATE_SCHEMA}]"
                    )
                continue
            if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
                problems.append(
                    Problem(where, "", "not a Kubernetes manifest (no apiVersion and kind)" + SKIP_HINT)
                )
                continue
            found, ok = self.check_object(doc, where)
            problems += found
            oks += [ok] if ok else []
        return problems, oks

    def files(self, targets: Iterable[str]) -> Iterator[tuple[pathlib.Path, str]]:
        for target in targets:
            path = pathlib.Path(target)
            path = path if path.is_absolute() else self.root / path
            if path.is_dir():
                members = sorted(p for p in path.rglob("*") if p.is_file())
            elif path.exists():
                members = [path]
            else:
                raise SetupError(f"{target}: no such file or folder")
            for member in members:
                try:
                    display = member.resolve().relative_to(self.root.resolve()).as_posix()
                except ValueError:
                    display = str(member)
                yield member, display

    def run(self, targets: Iterable[str]) -> tuple[list[Problem], list[str], int]:
        problems: list[Problem] = []
        oks: list[str] = []
        count = 0
        for path, display in self.files(targets):
            count += 1
            found, ok = self.check_file(path, display)
            problems += found
            oks += ok
        return problems, oks, count


def template_strings(path: list, node: Any) -> Iterator[tuple[str, str]]:
    """(path, string) for every string in node, mapping keys included."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str):
                yield format_path(path + [key]), key
            yield from template_strings(path + [key], value)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from template_strings(path + [index], value)
    elif isinstance(node, str):
        yield format_path(path), node


def sample_from_expression(expression: str) -> str:
    """A fixed value of the shape `oc process` generates from "[a-z0-9]{8}"-style expressions."""
    return re.sub(r"\[([^\]]+)\]\{(\d+)\}", lambda m: m.group(1)[0] * int(m.group(2)), expression)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=pathlib.Path(__file__).resolve().parent.parent, type=pathlib.Path)
    parser.add_argument(
        "--kubernetes-version", default=os.environ.get("VALIDATE_KUBERNETES_VERSION", KUBERNETES_VERSION)
    )
    parser.add_argument(
        "paths", nargs="*", help="files or folders (default: deploy/clowdapp.yaml deploy/kubernetes)"
    )
    args = parser.parse_args(argv)
    try:
        crd_files, need_clowdapp = crd_files_from_environment()
        validator = DeployValidator(args.root, args.kubernetes_version, crd_files, need_clowdapp)
        problems, oks, files = validator.run(args.paths or SCANNED)
    except SetupError as e:
        print(f"validate-deploy: {e}", file=sys.stderr)
        return 2
    for line in oks:
        print(line)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"validate-deploy: {len(problems)} problem(s) in {files} file(s)", file=sys.stderr)
        return 1
    version = validator.kubernetes_version
    print(f"validate-deploy: {len(oks)} object(s) in {files} file(s) valid (Kubernetes {version}, strict)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
