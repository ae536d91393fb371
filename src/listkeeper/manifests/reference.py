"""The manifest reference (docs/reference.md), generated from the same JSON Schemas as schemas/.

One section per kind, one table per object: field, type, default, description. A test fails when the
committed file is stale, as for schemas/."""

from __future__ import annotations

import json
from pathlib import Path

from .kinds import KINDS

HEADER = """# Manifest reference

Generated from the pydantic models by `listkeeper schema` (do not edit by hand; a test keeps it fresh).
Every manifest has `apiVersion: listkeeper/v1`, a `kind`, `metadata` (`name`, `labels`, `annotations`,
`renamedFrom`) and a `spec`, described below per kind. Durations are seconds or `30s`, `5m`, `2h`, `5d`.
Secrets are `{env: NAME}` or `{file: PATH}`, never inline.
"""


def _type(prop: dict) -> str:
    if "$ref" in prop:
        return f"[{prop['$ref'].rsplit('/', 1)[-1]}](#{prop['$ref'].rsplit('/', 1)[-1].lower()})"
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    for key in ("anyOf", "oneOf"):
        if key in prop:
            kinds = [_type(p) for p in prop[key] if p.get("type") != "null"]
            return " or ".join(dict.fromkeys(kinds)) or "null"
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}))}"
    if kind == "object" and "additionalProperties" in prop and isinstance(prop["additionalProperties"], dict):
        return f"map of {_type(prop['additionalProperties'])}"
    return str(kind)


def _default(prop: dict) -> str:
    if "default" not in prop:
        return ""
    value = json.dumps(prop["default"], ensure_ascii=False)
    return f"`{value}`" if len(value) < 60 else "(see schema)"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(name: str, schema: dict) -> list[str]:
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [_cell(schema["description"]), ""]
    if "enum" in schema:
        return lines + ["One of " + ", ".join(f"`{v}`" for v in schema["enum"]) + ".", ""]
    required = set(schema.get("required", []))
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    for field, prop in schema.get("properties", {}).items():
        mark = f"**{field}**" if field in required else field
        lines.append(f"| {mark} | {_type(prop)} | {_default(prop)} | {_cell(prop.get('description', ''))} |")
    return lines + [""]


def reference() -> str:
    out = [HEADER]
    done: set[str] = set()
    for kind, model in sorted(KINDS.items()):
        schema = model.model_json_schema(by_alias=True)
        defs = schema.get("$defs", {})
        spec_ref = schema["properties"]["spec"].get("$ref", "").rsplit("/", 1)[-1]
        out += [f"## {kind}", "", _cell(schema.get("description", "")), ""]
        order = [spec_ref] + sorted(d for d in defs if d != spec_ref)
        for name in order:
            if name in done or name not in defs or name == "Metadata":
                continue
            done.add(name)
            out += _table(name, defs[name])
    return "\n".join(out).rstrip() + "\n"


def write_reference(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reference(), encoding="utf-8")
    return path
