"""Read YAML manifests with ruamel.yaml (libyaml via ruamel.yaml.clib), keeping where every key and item came from."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.resolver import VersionedResolver

from .errors import Location, ManifestError, field_path

SUFFIXES = (".yaml", ".yml")


class ManifestResolver(VersionedResolver):
    """Manifests are YAML 1.2. Fixing the version here spares ruamel.yaml from working it out
    again (through a caught AttributeError under the C parser) for every single scalar."""

    @property
    def processing_version(self) -> Any:
        return (1, 2)


def _yaml() -> YAML:
    yaml = YAML(typ="safe", pure=False)  # libyaml through ruamel.yaml.clib: nodes keep their marks
    yaml.Resolver = ManifestResolver
    return yaml


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
    found, errors = find_manifest_entries(paths)
    return [path for path, _ in found], errors


def find_manifest_entries(paths: Iterable[str | Path]) -> tuple[list[tuple[Path, os.stat_result]],
                                                                  list[ManifestError]]:
    """Every manifest file under `paths` with its stat: one system call per file (a reload of
    thousands of files looks at each one)."""
    files: list[tuple[Path, os.stat_result]] = []
    errors: list[ManifestError] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(_walk(path), key=lambda item: item[0].parts))  # Path's own order, but faster
        elif path.is_file():
            files.append((path, path.stat()))
        else:
            errors.append(ManifestError(Location(str(path)), "", "no such file or directory"))
    return files, errors


def _walk(folder: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """As Path.rglob: symlinked files are followed, symlinked folders are not entered."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(Path(entry.path))
            elif os.path.splitext(entry.name)[1] in SUFFIXES and entry.is_file():
                yield Path(entry.path), entry.stat()
        except OSError:  # gone meanwhile, or a dangling link: not a manifest file
            continue


SHALLOW = 2  # without `precise`, positions are kept for paths this short (metadata.name, spec.address)


def read_file(path: Path) -> tuple[str | None, list[ManifestError]]:
    try:
        return path.read_text(encoding="utf-8"), []
    except (OSError, UnicodeDecodeError) as exc:
        return None, [ManifestError(Location(str(path)), "", f"cannot read file: {exc}")]


def load_file(path: Path, precise: bool = True) -> tuple[list[Document], list[ManifestError]]:
    text, errors = read_file(path)
    return parse_text(str(path), text, precise) if text is not None else ([], errors)


def parse_text(source: str, text: str, precise: bool = True) -> tuple[list[Document], list[ManifestError]]:
    yaml = _yaml()
    docs: list[Document] = []
    errors: list[ManifestError] = []
    try:
        for node in yaml.compose_all(text):
            if node is None:
                continue
            positions: dict[tuple, tuple[int, int]] = {}
            data = _plain(node, (), positions, yaml.constructor, source, errors, 0, precise)
            if data is None:
                continue
            start = (node.start_mark.line + 1, node.start_mark.column + 1)
            docs.append(Document(source, Location(source, *start), data, positions))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        return docs, [ManifestError(Location(source, line, col), "", f"YAML syntax error: {message}")]
    except (YAMLError, ValueError, TypeError) as exc:
        return docs, [ManifestError(Location(source), "", f"YAML syntax error: {exc}")]
    return docs, errors


def load_documents(paths: Iterable[str | Path], precise: bool = True) -> tuple[list[Document], list[ManifestError]]:
    files, errors = find_manifest_files(paths)
    docs: list[Document] = []
    for path in files:
        file_docs, file_errors = load_file(path, precise)
        docs.extend(file_docs)
        errors.extend(file_errors)
    return docs, errors


MAX_DEPTH = 64
STR_TAG = "tag:yaml.org,2002:str"


def _scalar(node: ScalarNode, constructor) -> Any:
    tag = node.ctag
    if tag is not None and tag.handle is None and tag.suffix == STR_TAG:
        return node.value  # the common case, without the constructor's dispatch
    return constructor.construct_object(node, deep=True)


def _plain(node: Node, path: tuple, positions: dict, constructor, source: str, errors: list, depth: int,
           precise: bool = True) -> Any:
    """Nodes -> plain Python values, recording the position of every key and list item
    (with `precise` False, only of shallow ones: a list of 100,000 subscribers costs no position map)."""
    if depth > MAX_DEPTH:
        raise YAMLError(f"nesting deeper than {MAX_DEPTH} levels (a recursive alias?)")
    if isinstance(node, MappingNode):
        constructor.flatten_mapping(node)  # merge keys (<<)
        out = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, constructor) if isinstance(key_node, ScalarNode) else \
                constructor.construct_object(key_node, deep=True)
            where = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in out:
                first = positions.get(path + (key,), where)
                errors.append(ManifestError(Location(source, *where), field_path(path + (key,)),
                                            f"duplicate key (first at line {first[0]})"))
                continue
            if precise or depth < SHALLOW:
                positions[path + (key,)] = where
            out[key] = _plain(value_node, path + (key,), positions, constructor, source, errors, depth + 1, precise)
        return out
    if isinstance(node, SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            if precise or depth < SHALLOW:
                positions[path + (index,)] = (item.start_mark.line + 1, item.start_mark.column + 1)
            items.append(_plain(item, path + (index,), positions, constructor, source, errors, depth + 1, precise))
        return items
    if isinstance(node, ScalarNode):
        return _scalar(node, constructor)
    return None
