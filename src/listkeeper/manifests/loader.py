"""Read YAML manifests with ruamel.yaml, keeping where every key and item came from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .errors import Location, ManifestError

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Document:
    """One YAML document: plain data plus the position of every key and list item."""

    source: str
    start: Location
    data: Any
    positions: Mapping[tuple, tuple[int, int]] = field(repr=False)

    def locate(self, parts: tuple) -> Location:
        """The position of the deepest part of `parts` that exists in the document."""
        for end in range(len(parts), 0, -1):
            pos = self.positions.get(tuple(parts[:end]))
            if pos is not None:
                return Location(self.source, pos[0], pos[1])
        return self.start


def find_manifest_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[ManifestError]]:
    files: list[Path] = []
    errors: list[ManifestError] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            errors.append(ManifestError(Location(str(path)), "", "no such file or directory"))
    return files, errors


def load_file(path: Path) -> tuple[list[Document], list[ManifestError]]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [ManifestError(Location(source), "", f"cannot read file: {exc}")]
    yaml = YAML(typ="rt")
    docs: list[Document] = []
    try:
        for raw in yaml.load_all(text):
            if raw is None:
                continue
            positions: dict[tuple, tuple[int, int]] = {}
            start = _start_of(raw)
            data = _plain(raw, (), positions)
            docs.append(Document(source, Location(source, *start), data, positions))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        return docs, [ManifestError(Location(source, line, col), "", f"YAML syntax error: {message}")]
    except YAMLError as exc:
        return docs, [ManifestError(Location(source), "", f"YAML syntax error: {exc}")]
    return docs, []


def load_documents(paths: Iterable[str | Path]) -> tuple[list[Document], list[ManifestError]]:
    files, errors = find_manifest_files(paths)
    docs: list[Document] = []
    for path in files:
        file_docs, file_errors = load_file(path)
        docs.extend(file_docs)
        errors.extend(file_errors)
    return docs, errors


def _start_of(node: Any) -> tuple[int, int]:
    lc = getattr(node, "lc", None)
    if lc is not None and lc.line is not None:
        return lc.line + 1, lc.col + 1
    return 1, 1


def _plain(node: Any, path: tuple, positions: dict) -> Any:
    """Turn ruamel's round-trip nodes into plain Python values, recording positions."""
    if isinstance(node, CommentedMap):
        out = {}
        for key, value in node.items():
            line, col = node.lc.key(key)
            positions[path + (key,)] = (line + 1, col + 1)
            out[key] = _plain(value, path + (key,), positions)
        return out
    if isinstance(node, CommentedSeq):
        out_list = []
        for index, value in enumerate(node):
            line, col = node.lc.item(index)
            positions[path + (index,)] = (line + 1, col + 1)
            out_list.append(_plain(value, path + (index,), positions))
        return out_list
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node
