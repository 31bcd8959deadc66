#!/usr/bin/env python3
"""Validate Helm values against a chart's values.schema.json, as `helm install` would, offline.

    python validate_values.py SCHEMA VALUES [VALUES ...] [--defaults CHART_VALUES]
                              [--partial] [--k8s-definitions FILE]

Prints `OK` (exit 0) or one line per error with its path in the values (exit 1).

- VALUES files are deep-merged left to right like `helm -f a.yaml -f b.yaml` (maps merge, lists and
  scalars replace, a null value deletes the key).
- --defaults: the chart's own values.yaml, merged first. Helm validates the merged values, and the
  schema's `required` keys are normally satisfied by the chart's defaults, so a full check needs it.
- --partial: for an override file checked without the chart's defaults: `required` is dropped
  (except where a chosen `type` requires its config block), everything else (unknown keys under
  additionalProperties: false, types, enums, the
  conditional run launcher / run coordinator / compute log manager configs) is still checked.
- The Dagster schema points Kubernetes objects (resources, securityContext, volumes, ...) at remote
  `_definitions.json` URLs. Nothing is fetched: with --k8s-definitions FILE every such URL is read
  from FILE (a Kubernetes OpenAPI `_definitions.json` with `definitions` or `$defs`); without it they
  are accepted unchecked, and a note says so.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT202012

_unresolved: set[str] = set()


def deep_merge(base: Any, override: Any) -> Any:
    """Helm's coalescing of values files: maps merge recursively, anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = deep_merge(merged[key], value)
            else:
                merged[key] = value
        return merged
    return copy.deepcopy(override)


def drop_required(node: Any, keep: bool = False) -> Any:
    """The schema without its `required` lists, except under `then`: those say which config block a chosen
    `type` needs (runLauncher.type K8sRunLauncher needs config.k8sRunLauncher), which an override must get right."""
    if isinstance(node, dict):
        out = {
            k: drop_required(v, keep or k == "then")
            for k, v in node.items()
            if keep or k != "required" or not isinstance(v, list)
        }
        if isinstance(out.get("if"), dict) and "properties" in out["if"]:
            # Without the outer `required`, an absent `type` would make every `if` true: make the
            # condition need the key it tests, so a `then` applies only to the type actually chosen.
            out["if"] = {**out["if"], "required": list(out["if"]["properties"])}
        return out
    if isinstance(node, list):
        return [drop_required(v, keep) for v in node]
    return node


def load_yaml(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def make_registry(k8s_definitions: str | None) -> Registry:
    definitions: dict[str, Any] | None = None
    if k8s_definitions:
        document = json.loads(Path(k8s_definitions).read_text(encoding="utf-8"))
        defs = document.get("definitions") or document.get("$defs") or {}
        # Serve both spellings so `#/definitions/...` (the chart) and `#/$defs/...` (the file's own refs) resolve;
        # drop $id so the document is registered under whatever URL the chart asked for.
        definitions = {k: v for k, v in document.items() if k not in ("$id", "definitions", "$defs")}
        definitions["definitions"] = defs
        definitions["$defs"] = defs

    def retrieve(uri: str) -> Resource:
        if not uri.startswith(("http://", "https://")):
            raise NoSuchResource(ref=uri)
        if definitions is not None and uri.endswith("_definitions.json"):
            return Resource.from_contents(definitions, default_specification=DRAFT202012)
        _unresolved.add(uri)
        # Unknown remote document: accept anything under it (every pointer into it resolves to {}).
        return Resource.from_contents(_AnyDocument(), default_specification=DRAFT202012)

    return Registry(retrieve=retrieve)


class _AnyDocument(dict):
    """A schema document in which every JSON pointer resolves to the empty (accept-all) schema."""

    def __getitem__(self, key: str) -> Any:
        return _AnyDocument()

    def get(self, key: str, default: Any = None) -> Any:  # keyword look-ups ($id, $anchor, ...) find nothing
        return default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("schema", help="the chart's values.schema.json")
    parser.add_argument("values", nargs="+", help="values file(s), merged left to right")
    parser.add_argument("--defaults", help="the chart's values.yaml, merged before the values files")
    parser.add_argument("--partial", action="store_true", help="ignore `required` (override file without defaults)")
    parser.add_argument("--k8s-definitions", help="local Kubernetes _definitions.json for the schema's remote $refs")
    args = parser.parse_args(argv)

    schema = json.loads(Path(args.schema).read_text(encoding="utf-8"))
    if args.partial:
        schema = drop_required(schema)
    values: Any = load_yaml(args.defaults) if args.defaults else {}
    for path in args.values:
        values = deep_merge(values, load_yaml(path))

    validator = Draft202012Validator(schema, registry=make_registry(args.k8s_definitions))
    errors = sorted(validator.iter_errors(values), key=lambda e: [str(p) for p in e.absolute_path])
    for error in errors:
        where = ".".join(str(p) for p in error.absolute_path) or "<root>"
        print(f"ERROR {where}: {error.message}")
    for uri in sorted(_unresolved):
        print(f"NOTE not checked (no local copy, nothing fetched): {uri}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} error(s)")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
