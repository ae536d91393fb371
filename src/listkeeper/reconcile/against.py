"""Plan against the manifests at a git revision, so CI can review a change without any store."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from listkeeper.manifests import load_manifests
from listkeeper.store.config import AppliedResource

from .desired import desired_state


class RevisionError(Exception):
    pass


def _git(*args: str, cwd: Path) -> bytes:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True)
    if result.returncode != 0:
        raise RevisionError(result.stderr.decode(errors="replace").strip() or f"git {args[0]} failed")
    return result.stdout


def applied_at_revision(revision: str, paths: tuple[str, ...], cwd: Path = Path(".")) -> dict:
    """The manifests at `revision`, shaped as applied state."""
    top = Path(_git("rev-parse", "--show-toplevel", cwd=cwd).decode().strip())
    _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", cwd=cwd)
    with tempfile.TemporaryDirectory(prefix="listkeeper-rev-") as tmp:
        present = []
        for path in paths:
            rel = os.path.relpath(Path(cwd, path).resolve(), top)
            try:
                data = _git("archive", "--format=tar", revision, "--", rel, cwd=top)
            except RevisionError:
                continue  # not in that revision: nothing applied from it
            with tarfile.open(fileobj=io.BytesIO(data)) as archive:
                archive.extractall(tmp, filter="data")
            present.append(Path(tmp, rel))
        if not present:
            return {}
        try:
            manifests = load_manifests(present)
        except Exception as exc:
            raise RevisionError(f"the manifests at {revision} do not load: {exc}") from None
        desired = desired_state(manifests)
        return {
            key: AppliedResource(d.kind, d.name, d.spec, d.hash, 0,
                                 d.source.replace(tmp + os.sep, f"{revision}:"), d.spec, d.annotations)
            for key, d in desired.items()
        }
