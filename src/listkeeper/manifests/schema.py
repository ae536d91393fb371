"""JSON Schema (draft 2020-12) per kind, generated from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path

from .kinds import KINDS

DRAFT = "https://json-schema.org/draft/2020-12/schema"
ALL = "listkeeper.schema.json"


def file_name(kind: str) -> str:
    return f"{kind.lower()}.schema.json"


def schemas() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for kind, model in sorted(KINDS.items()):
        schema = model.model_json_schema(by_alias=True)
        out[file_name(kind)] = {"$schema": DRAFT, "$id": file_name(kind), **schema}
    out[ALL] = {
        "$schema": DRAFT,
        "$id": ALL,
        "title": "Any listkeeper manifest",
        "anyOf": [{"$ref": file_name(kind)} for kind in sorted(KINDS)],
    }
    return out


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = folder / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written
