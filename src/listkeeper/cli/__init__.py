"""The command line: parses, calls, prints. No decisions here.

The `main` group and what its commands share live here; the commands are in this package's modules by
subject: config (validate, schema, reconcile, serve, status), queue (queue, suppress), members (members,
bounces, moderation) and activity (tick, events, digest, archive, report)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import click

from listkeeper.manifests import ManifestErrors, load_manifests

DEFAULT_PATHS = ("lists.d", "routes.d")
store_option = click.option("--store", "store_url", envvar="LISTKEEPER_STORE", default=None,
                            help="Store URL (default sqlite:///var/listkeeper.db; env LISTKEEPER_STORE).")
progress_option = click.option("--progress/--no-progress", "show_progress", default=None,
                               help="Draw a progress bar on stderr (default: only when stderr is a terminal).")


def _duration(ctx, param, value: str) -> float:
    from pydantic import TypeAdapter, ValidationError
    from listkeeper.manifests.common import Duration
    try:
        return TypeAdapter(Duration).validate_python(value)
    except ValidationError:
        raise click.BadParameter(f"{value!r} is not a duration such as 30d, 12h or a number of seconds") from None


keep_finished_option = click.option(
    "--keep-finished", default="30d", show_default=True, metavar="DURATION", callback=_duration,
    help="Keep finished deliveries (delivered, failed, suppressed), decided holds and the messages nothing "
         "needs any more this long; then housekeeping removes them, a batch a round.")


def _load(paths: tuple[str, ...]):
    try:
        manifests = load_manifests(paths or DEFAULT_PATHS)
    except ManifestErrors as exc:
        for error in exc.errors:
            click.echo(str(error), err=True)
        click.echo(f"{len(exc.errors)} error(s); nothing was changed.", err=True)
        sys.exit(1)
    for path in manifests.skipped:
        click.echo(f"{path}: skipped: no document has apiVersion or kind, so it holds no manifest", err=True)
    return manifests


def _open_store(url: str | None):
    from listkeeper.store import Store, StoreError
    try:
        return Store.open(url)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


@contextmanager
def _store(url: str | None):
    store = _open_store(url)
    try:
        yield store
    finally:
        store.close()


@click.group()
@click.version_option(package_name="listkeeper")
def main() -> None:
    """listkeeper: mailing lists and mail delivery, configured from git."""



def _moment(value: str | None) -> float:
    import datetime
    if not value:
        import time
        return time.time()
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO date or time, e.g. 2026-11-23T09:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


# the commands register themselves on `main` when their modules are imported
from . import activity, config, members, queue  # noqa: E402,F401
