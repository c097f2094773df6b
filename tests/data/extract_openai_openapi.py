"""Cut the parts of OpenAI's OpenAPI document the simulator serves into openai-openapi-subset.json.

The whole document (github.com/openai/openai-openapi, openapi.yaml) is about 3 MB; the tests need the
operations of the routes the simulator serves and the schemas they reference, nothing else.
Usage: python tests/data/extract_openai_openapi.py path/to/openapi.yaml COMMIT > tests/data/openai-openapi-subset.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

# (path in the document, method): the simulator's routes under /openai/v1
OPERATIONS = [
    ("/models", "get"),
    ("/chat/completions", "post"),
    ("/organization/projects", "get"),
    ("/organization/projects/{project_id}/api_keys", "get"),
    ("/organization/projects/{project_id}/api_keys/{api_key_id}", "get"),
    ("/organization/projects/{project_id}/api_keys/{api_key_id}", "delete"),
    ("/organization/usage/completions", "get"),
    ("/organization/costs", "get"),
]


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                found.add(v)
            else:
                found |= refs(v)
    elif isinstance(node, list):
        for v in node:
            found |= refs(v)
    return found


PROSE = ("description", "x-oaiMeta", "example", "examples", "summary", "x-stainless-const", "title")


def strip(node: Any, names: bool = False) -> Any:
    """Without prose and examples: what validation needs. `names`: a mapping of property names, kept whole."""
    if isinstance(node, dict):
        return {k: strip(v, k == "properties" and not names) for k, v in node.items() if names or k not in PROSE}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(path: str, commit: str) -> None:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    paths: dict[str, Any] = {}
    for p, method in OPERATIONS:
        paths.setdefault(p, {})[method] = strip(doc["paths"][p][method])
    wanted = refs(paths)
    done: dict[str, Any] = {}
    while wanted:
        ref = wanted.pop()
        if ref in done:
            continue
        _, _, section, name = ref.split("/")
        node = strip(doc["components"][section][name])
        done[ref] = (section, name, node)
        wanted |= refs(node) - set(done)
    components: dict[str, dict[str, Any]] = {}
    for section, name, node in done.values():
        components.setdefault(section, {})[name] = node
    out = {"openapi": doc["openapi"], "source": f"github.com/openai/openai-openapi openapi.yaml at {commit}",
           "paths": paths, "components": components}
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
