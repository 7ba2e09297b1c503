"""The official Nchf_ConvergedCharging OpenAPI (TS 32.291) as a test oracle: every response the tests see is
checked against it (status code named for the operation, content type, body schema).

The YAML files live in the shared folder beside the repository (not copied into it). Two comment lines of the
main file are indented with tabs, which YAML loaders reject: tabs are replaced on load (see SOURCE.md there).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from tests.support import SHARED, unavailable

SPECS = SHARED / "specs" / "3gpp"
MAIN = "TS32291_Nchf_ConvergedCharging.yaml"

OPERATIONS = {
    "create": "/chargingdata",
    "update": "/chargingdata/{ChargingDataRef}/update",
    "release": "/chargingdata/{ChargingDataRef}/release",
}


def specs_or_skip() -> Path:
    if not (SPECS / MAIN).exists():
        unavailable(f"the 3GPP OpenAPI files are not beside the repository: {SPECS}")
    return SPECS


@cache
def documents() -> dict[str, Any]:
    import yaml

    docs: dict[str, Any] = {}
    for path in sorted(specs_or_skip().glob("*.yaml")):
        docs[path.name] = yaml.safe_load(path.read_text(encoding="utf-8").replace("\t", "  "))
    return docs


@cache
def _registry() -> Any:
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    return Registry().with_resources(
        (name, Resource.from_contents(doc, default_specification=DRAFT4)) for name, doc in documents().items()
    )


@cache
def validator(ref: str) -> Any:
    """A validator for `ref` such as 'TS32291_Nchf_ConvergedCharging.yaml#/components/schemas/X'."""
    from jsonschema import Draft4Validator

    return Draft4Validator({"$ref": ref}, registry=_registry())


def schema_errors(ref: str, instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(ref).iter_errors(instance)]


def _resolve_response(doc_name: str, response: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    while "$ref" in response:
        target, _, pointer = response["$ref"].partition("#")
        doc_name = target or doc_name
        node: Any = documents()[doc_name]
        for part in pointer.strip("/").split("/"):
            node = node[part]
        response = node
    return doc_name, response


def _schema_ref(doc_name: str, schema: dict[str, Any]) -> Any:
    """A schema from a response, with relative $refs made absolute (so it validates from any document)."""

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k == "$ref" and isinstance(v, str):
                    target, _, pointer = v.partition("#")
                    out[k] = f"{target or doc_name}#{pointer}"
                else:
                    out[k] = fix(v)
            return out
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    return fix(schema)


def check_response(operation: str, status: int, headers: dict[str, str], body: bytes) -> Any:
    """Assert that a response is one the spec allows for `operation`; returns the decoded body (or None)."""
    from jsonschema import Draft4Validator

    responses = documents()[MAIN]["paths"][OPERATIONS[operation]]["post"]["responses"]
    spec = responses.get(str(status))
    assert spec is not None or (status >= 300 and "default" in responses), (
        f"{operation}: status {status} is not named by the spec ({sorted(responses)})"
    )
    doc_name, spec = _resolve_response(MAIN, spec if spec is not None else responses["default"])
    content = spec.get("content")
    if not content:
        assert not body, f"{operation}: {status} must have no body, got {body[:200]!r}"
        return None
    content_type = headers.get("content-type", "").split(";")[0].strip()
    assert content_type in content, f"{operation}: {status} content type {content_type!r} not in {sorted(content)}"
    decoded = json.loads(body)
    schema = _schema_ref(doc_name, content[content_type]["schema"])
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in Draft4Validator(schema, registry=_registry()).iter_errors(decoded)
    ]
    assert not errors, f"{operation}: {status} body breaks the schema: {errors}\n{decoded}"
    if status == 201:
        assert "location" in headers, "201 Created needs a Location header"
    return decoded
