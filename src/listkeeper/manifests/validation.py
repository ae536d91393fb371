"""Documents -> validated manifests, with every error pointing at file:line:column."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from .common import API_VERSION, Manifest
from .errors import Location, ManifestError, ManifestErrors, field_path
from .kinds import KINDS
from .loader import Document, find_manifest_entries, parse_text, read_file


@dataclass(frozen=True)
class Resource:
    manifest: Manifest
    location: Location

    @property
    def kind(self) -> str:
        return self.manifest.KIND

    @property
    def name(self) -> str:
        return self.manifest.metadata.name

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)


@dataclass(frozen=True)
class Index:
    """What cross-resource checks look up."""

    served_domains: frozenset[str]
    relays: frozenset[str]
    directories: dict = None  # name -> MemberDirectorySpec
    lists: frozenset[str] = frozenset()  # MailingList names


@dataclass(frozen=True)
class Manifests:
    resources: tuple[Resource, ...]
    skipped: tuple[str, ...] = ()  # YAML files holding no manifest at all (e.g. a CI workflow)

    def of_kind(self, kind: str) -> list[Resource]:
        return [r for r in self.resources if r.kind == kind]


class FileCache:
    """What each file loaded and validated to. Only files whose text changed are parsed and validated
    again (the cross-checks always run on all): an engine reloading one changed list among thousands
    keeps one of these.

    A file is not even read again while its stat (inode, size, modification and change times) is the
    one it had when it was read, and it had not been modified in the second before: git's answer to
    "racy" files whose timestamp cannot tell two writes apart."""

    SETTLED_NS = 1_000_000_000

    def __init__(self) -> None:
        self._files: dict[tuple[str, bool], _Cached] = {}

    def unchanged(self, source: str, precise: bool, stat: os.stat_result | None) -> LoadedFile | None:
        found = self._files.get((source, precise))
        if found is None or stat is None or found.stat != _stat_key(stat):
            return None
        return found.loaded if stat.st_mtime_ns < found.read_at_ns - self.SETTLED_NS else None

    def get(self, source: str, precise: bool, text: str) -> LoadedFile | None:
        found = self._files.get((source, precise))
        return found.loaded if found is not None and found.text == text else None

    def put(self, source: str, precise: bool, text: str, loaded: LoadedFile, stat: os.stat_result | None,
            read_at_ns: int) -> None:
        self._files[(source, precise)] = _Cached(text, loaded, _stat_key(stat) if stat else None, read_at_ns)

    def keep_only(self, sources: set[str]) -> None:
        for key in [k for k in self._files if k[0] not in sources]:
            del self._files[key]


def _stat_key(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@dataclass(frozen=True)
class _Cached:
    text: str
    loaded: LoadedFile
    stat: tuple[int, int, int, int] | None
    read_at_ns: int


@dataclass(frozen=True)
class LoadedFile:
    documents: tuple[Document, ...]
    errors: tuple[ManifestError, ...]  # reading and YAML errors
    validated: tuple[tuple[Resource | None, tuple[ManifestError, ...]], ...]  # per document
    foreign: bool  # no document has apiVersion or kind: not ours (e.g. a CI workflow), skipped


def load_manifests(paths: Iterable[str | Path], cache: FileCache | None = None) -> Manifests:
    """Load, validate and cross-check; raises ManifestErrors listing every problem.

    The first pass keeps positions of shallow keys only; errors are rare, so only then are the
    files read again with every position, for exact path:line:column."""
    paths = list(paths)
    try:
        return _load(paths, False, cache)
    except ManifestErrors:
        return _load(paths, True, cache)


def _load_file(path: Path, stat: os.stat_result | None, precise: bool, cache: FileCache | None) -> LoadedFile:
    source = str(path)
    if cache is not None and (found := cache.unchanged(source, precise, stat)) is not None:
        return found
    read_at_ns = time.time_ns()
    text, errors = read_file(path)
    if text is None:
        return LoadedFile((), tuple(errors), (), False)
    loaded = cache.get(source, precise, text) if cache is not None else None
    if loaded is None:
        docs, errors = parse_text(source, text, precise)
        foreign = bool(docs) and not any(
            not isinstance(d.data, dict) or "apiVersion" in d.data or "kind" in d.data for d in docs)
        validated = () if foreign else tuple((r, tuple(e)) for r, e in map(_validate_document, docs))
        loaded = LoadedFile(tuple(docs), tuple(errors), validated, foreign)
    if cache is not None:
        cache.put(source, precise, text, loaded, stat, read_at_ns)
    return loaded


def _load(paths: list, precise: bool, cache: FileCache | None = None) -> Manifests:
    files, errors = find_manifest_entries(paths)
    if cache is not None:
        cache.keep_only({str(p) for p, _ in files})
    resources: list[Resource] = []
    skipped: list[str] = []
    by_key: dict[tuple[str, str], Resource] = {}
    docs_by_key: dict[tuple[str, str], Document] = {}
    for path, stat in files:
        loaded = _load_file(path, stat, precise, cache)
        errors.extend(loaded.errors)
        if loaded.foreign:
            skipped.append(str(path))
            continue
        for doc, (resource, doc_errors) in zip(loaded.documents, loaded.validated):
            errors.extend(doc_errors)
            if resource is None:
                continue
            first = by_key.get(resource.key)
            if first is not None:
                errors.append(ManifestError(
                    doc.locate(("metadata", "name")), "metadata.name",
                    f"duplicate {resource.kind} {resource.name!r}; first defined at {first.location}",
                ))
                errors.append(ManifestError(
                    docs_by_key[first.key].locate(("metadata", "name")), "metadata.name",
                    f"duplicate {resource.kind} {resource.name!r}; defined again at {resource.location}",
                ))
                continue
            resources.append(resource)
            by_key[resource.key] = resource
            docs_by_key[resource.key] = doc
    errors.extend(_cross_check(resources, docs_by_key))
    if errors:
        raise ManifestErrors(errors)
    return Manifests(tuple(resources), tuple(sorted(skipped)))


def _validate_document(doc: Document) -> tuple[Resource | None, list[ManifestError]]:
    data = doc.data
    if not isinstance(data, dict):
        return None, [ManifestError(doc.start, "", "a manifest must be a mapping with apiVersion, kind, metadata, spec")]
    problems = []
    api = data.get("apiVersion")
    if api is None:
        problems.append(ManifestError(doc.start, "apiVersion", "field required"))
    elif api != API_VERSION:
        problems.append(ManifestError(doc.locate(("apiVersion",)), "apiVersion",
                                      f"unknown apiVersion {api!r}; expected {API_VERSION!r}"))
    kind = data.get("kind")
    if kind is None:
        problems.append(ManifestError(doc.start, "kind", "field required"))
    elif kind not in KINDS:
        problems.append(ManifestError(doc.locate(("kind",)), "kind",
                                      f"unknown kind {kind!r}; expected one of {', '.join(sorted(KINDS))}"))
    if problems:
        return None, problems
    model = KINDS[kind]
    try:
        manifest = model.model_validate(data)
    except ValidationError as exc:
        return None, [_from_pydantic(doc, err) for err in exc.errors(include_input=False, include_url=False)]
    location = doc.locate(("metadata", "name"))
    return Resource(manifest, location), []


def _from_pydantic(doc: Document, err: dict) -> ManifestError:
    parts = _data_path(doc.data, tuple(err["loc"]))
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if err["type"] == "missing":
        message = "required field is missing"
    elif err["type"] == "extra_forbidden":
        message = "unknown field"
    elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx", {})
        tag = ctx.get("discriminator", "").strip("'")
        parts = parts + (tag,)
        message = f"expected one of {ctx.get('expected_tags', '')}" if err["type"] == "union_tag_invalid" else "required field is missing"
    return ManifestError(doc.locate(parts), field_path(parts), message)


def _data_path(data, loc: tuple) -> tuple:
    """pydantic's loc with discriminated-union tags removed, so it walks the document."""
    parts: list = []
    current = data
    for i, element in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(current, dict) and element not in current and not last and element in current.values():
            continue  # a union tag such as 'pickup'
        parts.append(element)
        if isinstance(current, dict):
            current = current.get(element)
        elif isinstance(current, list) and isinstance(element, int) and element < len(current):
            current = current[element]
        else:
            current = None
    return tuple(parts)


def _cross_check(resources: list[Resource], docs: dict) -> list[ManifestError]:
    index = Index(
        served_domains=frozenset(r.manifest.spec.domain for r in resources if r.kind == "Domain"),
        relays=frozenset(r.name for r in resources if r.kind == "Relay"),
        directories={r.name: r.manifest.spec for r in resources if r.kind == "MemberDirectory"},
        lists=frozenset(r.name for r in resources if r.kind == "MailingList"),
    )
    errors: list[ManifestError] = []
    tables = [r for r in resources if r.kind == "RoutingTable"]
    for extra in tables[1:]:
        errors.append(ManifestError(extra.location, "metadata.name",
                                    f"only one RoutingTable is allowed; the first is at {tables[0].location}"))
    addresses: dict[str, Resource] = {}
    archives: dict[str, Resource] = {}
    for r in resources:
        doc = docs[r.key]
        for parts, message in r.manifest.problems(index):
            errors.append(ManifestError(doc.locate(parts), field_path(parts), message))
        if r.kind == "MailingList":
            address = r.manifest.spec.address
            if address in addresses:
                errors.append(ManifestError(doc.locate(("spec", "address")), "spec.address",
                                            f"{address} is already the address of MailingList "
                                            f"{addresses[address].name!r} at {addresses[address].location}"))
            addresses.setdefault(address, r)
            errors.extend(_shared_archive(r, doc, archives))
    domains: dict[str, Resource] = {}
    for r in resources:
        if r.kind == "Domain":
            d = r.manifest.spec.domain
            if d in domains:
                errors.append(ManifestError(docs[r.key].locate(("spec", "domain")), "spec.domain",
                                            f"domain {d} is already served by Domain {domains[d].name!r} at {domains[d].location}"))
            domains.setdefault(d, r)
    errors.extend(_shared_usernames(resources, docs))
    return errors


def _shared_usernames(resources: list[Resource], docs: dict) -> list[ManifestError]:
    """A login names one account: two with one username would make a password valid for both."""
    first: dict[str, Resource] = {}
    errors = []
    for r in resources:
        if r.kind == "SmtpAccount":
            username = r.manifest.spec.username
            found = first.setdefault(username, r)
            if found is not r:
                errors.append(ManifestError(docs[r.key].locate(("spec", "username")), "spec.username",
                                            f"{username} is already the username of SmtpAccount {found.name!r} "
                                            f"at {found.location}"))
    return errors


def _shared_archive(r: Resource, doc, archives: dict[str, Resource]) -> list[ManifestError]:
    """Two lists writing one archive would mix their posts (and an mbox could be cut short)."""
    archive = r.manifest.spec.archive
    if not archive.enabled:
        return []
    path = archive.location(r.name)
    first = archives.setdefault(path, r)
    if first is r:
        return []
    return [ManifestError(doc.locate(("spec", "archive", "path")),
                          "spec.archive.path", f"{path} is already the archive of MailingList {first.name!r} "
                          f"at {first.location}")]
