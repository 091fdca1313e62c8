#!/usr/bin/env python3
"""Writes deploy/kubernetes/prometheusrule.yaml from deploy/prometheus/alerts.yaml.

The PrometheusRule's spec is alerts.yaml verbatim (indented), so the two cannot
drift. Run after editing alerts.yaml; `--check` exits 1 if the CR is stale.
"""
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "alerts.yaml"
TARGET = HERE.parent / "kubernetes" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yaml by
# deploy/prometheus/render-prometheusrule.py - edit alerts.yaml, then re-run it.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: event-router
  labels:
    app.kubernetes.io/name: event-router
spec:
"""


def render() -> str:
    body = "".join(
        ("  " + line) if line.strip() else line
        for line in SOURCE.read_text().splitlines(keepends=True)
    )
    return HEADER + body


def main() -> int:
    text = render()
    if sys.argv[1:] == ["--check"]:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date; run {pathlib.Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
