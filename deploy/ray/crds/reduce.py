"""Reduce a KubeRay CustomResourceDefinition to the OpenAPI v3 schema of one version, without its
`description` keys (deploy/ray/crds/README.md says where the CRDs come from). A one-off, run when
the vendored schemas are refreshed:

    git --git-dir=KUBERAY.git show COMMIT:ray-operator/config/crd/bases/ray.io_rayservices.yaml \
        | python deploy/ray/crds/reduce.py v1 > deploy/ray/crds/rayservice-v1.json

Reads the CRD (YAML) on stdin, writes JSON on stdout. Only `description` keys that hold text are
removed: a property *named* description (a schema under `properties`) is kept.
"""

import json
import sys
from typing import Any

import yaml


def strip_descriptions(node: Any, in_properties: bool = False) -> Any:
    if isinstance(node, dict):
        return {
            key: strip_descriptions(value, in_properties=key == "properties" and not in_properties)
            for key, value in node.items()
            if in_properties or not (key == "description" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [strip_descriptions(item) for item in node]
    return node


def reduce(crd: dict[str, Any], version: str) -> dict[str, Any]:
    if crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"not a CustomResourceDefinition: kind {crd.get('kind')!r}")
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema: dict[str, Any] = strip_descriptions(entry["schema"]["openAPIV3Schema"])
            return schema
    raise ValueError(f"{crd['metadata']['name']}: no version {version!r}")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    schema = reduce(yaml.safe_load(sys.stdin), sys.argv[1])
    json.dump(schema, sys.stdout, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
