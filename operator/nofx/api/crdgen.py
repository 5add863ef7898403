"""Generates the CustomResourceDefinitions in crds/ from the pydantic models.

    python -m nofx.api.crdgen --out crds      # write crds/<plural>.nofx.dev.yaml
    python -m nofx.api.crdgen --check crds    # exit 1 if the files differ from the models

pydantic emits JSON Schema; the API server wants a *structural* OpenAPI v3 schema: no $ref, no
anyOf for Optional, no title, a type on every node except those that keep unknown fields.
"""

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

import yaml

from nofx.api import RESOURCES
from nofx.api.common import GROUP, VERSION, Resource

HEADER = "# Generated from operator/nofx/api by `python -m nofx.api.crdgen`; do not edit.\n"
PRESERVE = "x-kubernetes-preserve-unknown-fields"


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turns one pydantic JSON Schema node into a structural OpenAPI v3 schema node."""
    node = _resolve(node, defs)
    node.pop("title", None)
    if "description" in node:
        # Docstrings wrap at 100 columns; kubectl explain re-wraps on its own.
        node["description"] = " ".join(node["description"].split())
    if "default" in node and node["default"] is None:
        del node["default"]
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if node.get("additionalProperties") in (True, {}):
        # dict[str, Any]: an object of arbitrary JSON.
        del node["additionalProperties"]
        node[PRESERVE] = True
    if "properties" in node:
        node["properties"] = {
            name: structural(prop, defs) for name, prop in node["properties"].items()
        }
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = structural(node["additionalProperties"], defs)
    if "items" in node:
        node["items"] = structural(node["items"], defs)
    if "type" not in node:
        # Any: arbitrary JSON, which the API server accepts only with this extension.
        node[PRESERVE] = True
    return node


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Replaces a $ref by the definition, and Optional[X] (anyOf [X, null]) by X, keeping the
    keywords written where the field uses the type (description, default, constraints)."""
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        return _merge(_resolve(defs[ref.rsplit("/", 1)[1]], defs), node)
    branches = node.pop("anyOf", None)
    if branches is not None:
        types = [branch for branch in branches if branch != {"type": "null"}]
        if len(types) != 1:
            raise ValueError(f"unions other than Optional are not structural: {branches}")
        return _merge(_resolve(types[0], defs), node)
    return node


def _merge(resolved: dict[str, Any], use_site: dict[str, Any]) -> dict[str, Any]:
    merged = {**resolved, **use_site}
    if "x-kubernetes-validations" in resolved and "x-kubernetes-validations" in use_site:
        merged["x-kubernetes-validations"] = (
            resolved["x-kubernetes-validations"] + use_site["x-kubernetes-validations"]
        )
    return merged


def crd(resource: type[Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    info = resource.kind_info
    kind = resource.model_fields["kind"].default
    generated = resource.model_json_schema(by_alias=True)
    schema = structural(generated, generated.get("$defs", {}))
    schema.pop("$defs", None)
    properties = schema["properties"]
    for name in ("apiVersion", "kind"):
        properties[name] = {"type": "string", "description": properties[name]["description"]}
    # The API server owns metadata's schema and allows nothing but its type here.
    properties["metadata"] = {"type": "object"}
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": schema},
        "subresources": {"status": {}},
        "additionalPrinterColumns": [
            {
                "name": column.name,
                "type": column.type,
                "jsonPath": column.json_path,
                "description": column.description,
                **({"priority": column.priority} if column.priority else {}),
            }
            for column in info.printer_columns
        ],
    }
    if info.selectable_fields:
        version["selectableFields"] = [{"jsonPath": path} for path in info.selectable_fields]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "annotations": {"nofx.dev/generated-by": "python -m nofx.api.crdgen"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": info.plural,
                "singular": kind.lower(),
                "shortNames": list(info.short_names),
                "categories": ["nofx"],
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Writes repeated values in full instead of as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def peering_crds() -> list[dict[str, Any]]:
    """Kopf's peering resources: replicas of the operator see each other through them, so only
    the one with the highest priority works while the others stand by."""
    crds = []
    for kind, scope in (("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced")):
        plural = kind.lower() + "s"
        crds.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.kopf.dev"},
                "spec": {
                    "group": "kopf.dev",
                    "scope": scope,
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "description": "Operator replicas and their priorities "
                                    "(managed by Kopf).",
                                    "properties": {"status": {"type": "object", PRESERVE: True}},
                                }
                            },
                        }
                    ],
                },
            }
        )
    return crds


def render() -> dict[str, str]:
    """File name -> YAML text of every CRD; keys sorted so the output is stable."""
    files = {
        f"{resource.kind_info.plural}.{GROUP}.yaml": HEADER
        + yaml.dump(crd(resource), Dumper=_Dumper, sort_keys=True, width=100)
        for resource in RESOURCES
    }
    files["kopf-peering.yaml"] = HEADER + yaml.dump_all(
        peering_crds(), Dumper=_Dumper, sort_keys=True, width=100
    )
    return files


def write(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (directory / name).write_text(text)


def differences(directory: Path) -> list[str]:
    """Unified diffs between the files in directory and freshly generated ones."""
    diffs = []
    for name, expected in render().items():
        path = directory / name
        actual = path.read_text() if path.exists() else ""
        if actual != expected:
            diff = difflib.unified_diff(
                actual.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                fromfile=str(path),
                tofile=f"{path} (generated)",
            )
            diffs.append("".join(diff))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, help="write the CRDs into this directory")
    action.add_argument("--check", type=Path, help="fail if the CRDs here are out of date")
    args = parser.parse_args(argv)
    if args.out:
        write(args.out)
        return 0
    diffs = differences(args.check)
    if diffs:
        sys.stderr.write("".join(diffs))
        sys.stderr.write(
            f"\nThe CRDs in {args.check} differ from the API types: run `make crds`.\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
