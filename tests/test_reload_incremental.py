"""A reload parses, validates and rebuilds only what changed: the manifest file cache and the snapshot."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from listkeeper.engine.snapshot import load_snapshot
from listkeeper.manifests import ManifestErrors, load_manifests
from listkeeper.manifests.validation import FileCache
from listkeeper.reconcile import reconcile

from .conftest import DOMAIN, reconcile_folder, write


def a_list(name: str, prefix: str = "") -> str:
    return f"""
apiVersion: listkeeper/v1
kind: MailingList
metadata: {{name: {name}}}
spec:
  address: {name}@example.org
  type: discussion
  subject_prefix: "{prefix or name}"
"""


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    for name in ("one", "two", "three"):
        write(folder, f"{name}.yaml", a_list(name))
    return folder


def by_name(manifests):
    return {r.name: r for r in manifests.resources}


def test_unchanged_files_are_not_parsed_again(conf):
    cache = FileCache()
    first = by_name(load_manifests([conf], cache))
    write(conf, "two.yaml", a_list("two", "[2]"))
    second = by_name(load_manifests([conf], cache))
    assert second["one"] is first["one"] and second["three"] is first["three"]  # reused as they were
    assert second["two"] is not first["two"] and second["two"].manifest.spec.subject_prefix == "[2]"
    assert by_name(load_manifests([conf])).keys() == second.keys()  # the same result as without a cache


def test_the_cross_checks_still_see_every_file(conf):
    cache = FileCache()
    load_manifests([conf], cache)
    write(conf, "four.yaml", a_list("four").replace("four@example.org", "one@example.org"))
    with pytest.raises(ManifestErrors) as info:
        load_manifests([conf], cache)
    assert any("one@example.org is already the address of MailingList" in str(e) for e in info.value.errors)
    (conf / "four.yaml").unlink()
    assert set(by_name(load_manifests([conf], cache))) == {"example-org", "one", "two", "three"}


def test_errors_of_a_cached_file_are_reported_again_with_their_place(conf):
    cache = FileCache()
    write(conf, "two.yaml", a_list("two").replace("type: discussion", "type: chat"))
    for _ in range(2):
        with pytest.raises(ManifestErrors) as info:
            load_manifests([conf], cache)
        assert [str(e) for e in info.value.errors] == [f"{conf / 'two.yaml'}:6:3: spec.type: Input should be "
                                                      "'announce', 'moderated' or 'discussion'"]


def test_a_removed_file_leaves_the_cache(conf):
    cache = FileCache()
    load_manifests([conf], cache)
    (conf / "three.yaml").unlink()
    assert "three" not in by_name(load_manifests([conf], cache))
    assert not any("three" in source for source, _ in cache._files)


def test_the_snapshot_rebuilds_only_changed_resources(conf, store_url):
    store = reconcile_folder(conf, store_url)
    try:
        before = load_snapshot(store)
        write(conf, "two.yaml", a_list("two", "[2]"))
        reconcile(load_manifests([conf]), store)
        after = load_snapshot(store, before)
        assert after.generation == before.generation + 1
        assert after.lists["one@example.org"].spec is before.lists["one@example.org"].spec
        assert after.lists["two@example.org"].spec.subject_prefix == "[2]"
        assert after.lists == load_snapshot(store).lists  # the same configuration as a full load
    finally:
        store.close()


def test_a_rewrite_within_the_same_clock_tick_is_seen(conf):
    """Same size, written right after it was read: the stat cannot tell, so the text is compared."""
    cache = FileCache()
    write(conf, "two.yaml", a_list("two", "[a]"))
    assert by_name(load_manifests([conf], cache))["two"].manifest.spec.subject_prefix == "[a]"
    write(conf, "two.yaml", a_list("two", "[b]"))
    assert by_name(load_manifests([conf], cache))["two"].manifest.spec.subject_prefix == "[b]"


def test_a_rewrite_that_puts_the_old_times_back_is_seen(conf):
    """Editors and tools may restore the modification time (cp -p, rsync -t); the change time cannot be."""
    cache = FileCache()
    path = write(conf, "two.yaml", a_list("two", "[a]"))
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))  # settled long ago
    assert by_name(load_manifests([conf], cache))["two"].manifest.spec.subject_prefix == "[a]"
    time.sleep(0.05)  # past the kernel clock's tick
    write(conf, "two.yaml", a_list("two", "[b]"))
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    assert by_name(load_manifests([conf], cache))["two"].manifest.spec.subject_prefix == "[b]"
