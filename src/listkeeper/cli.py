"""The command line: parses, calls, prints. No decisions here."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from listkeeper.manifests import ManifestErrors, load_manifests
from listkeeper.manifests.schema import write_schemas

DEFAULT_PATHS = ("lists.d", "routes.d")
store_option = click.option("--store", "store_url", envvar="LISTKEEPER_STORE", default=None,
                            help="Store URL (default sqlite:///var/listkeeper.db; env LISTKEEPER_STORE).")


def _load(paths: tuple[str, ...]):
    try:
        return load_manifests(paths or DEFAULT_PATHS)
    except ManifestErrors as exc:
        for error in exc.errors:
            click.echo(str(error), err=True)
        click.echo(f"{len(exc.errors)} error(s); nothing was changed.", err=True)
        sys.exit(1)


def _open_store(url: str | None):
    from listkeeper.store import Store, StoreError
    try:
        return Store.open(url)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(package_name="listkeeper")
def main() -> None:
    """listkeeper: mailing lists and mail delivery, configured from git."""


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
def validate(paths: tuple[str, ...]) -> None:
    """Check manifests (default: lists.d routes.d). Exit 0 when valid, 1 otherwise."""
    manifests = _load(paths)
    counts: dict[str, int] = {}
    for r in manifests.resources:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "no resources"
    click.echo(f"valid: {summary}")


@main.command()
@click.option("--out", "out", type=click.Path(file_okay=False), default="schemas", show_default=True)
def schema(out: str) -> None:
    """Write one JSON Schema (draft 2020-12) per manifest kind."""
    for path in write_schemas(Path(out)):
        click.echo(str(path))


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@store_option
@click.option("--dry-run", is_flag=True, help="Show the plan; change nothing.")
@click.option("--prune", is_flag=True, help="Delete resources that are no longer in the manifests.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0: no changes, 2: changes, 1: error.")
def reconcile(paths, store_url, dry_run, prune, detailed_exitcode) -> None:
    """Show (--dry-run) or apply the difference between the manifests and the store."""
    from listkeeper.reconcile import apply, plan_for, render_text
    manifests = _load(paths)
    store = _open_store(store_url)
    try:
        plan = plan_for(manifests, store, prune=prune)
        click.echo(render_text(plan))
        if not dry_run:
            generation = apply(plan, store)
            if generation is not None:
                click.echo(f"Applied: configuration generation {generation}.")
    finally:
        store.close()
    if detailed_exitcode and plan.has_changes:
        sys.exit(2)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@store_option
@click.option("--host", default="127.0.0.1", show_default=True, help="SMTP listen address.")
@click.option("--port", default=2525, show_default=True, type=click.IntRange(0, 65535), help="SMTP port.")
@click.option("--prune", is_flag=True, help="Let the start-up reconcile delete resources.")
@click.option("--concurrency", default=20, show_default=True, type=click.IntRange(1, 99),
              help="Parallel deliveries.")
def serve(paths, store_url, host, port, prune, concurrency) -> None:
    """Reconcile, then accept SMTP and deliver."""
    from listkeeper.engine.server import ServeOptions, serve_forever
    from listkeeper.reconcile import apply, plan_for
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("mail.log", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    manifests = _load(paths)
    store = _open_store(store_url)
    plan = plan_for(manifests, store, prune=prune)
    generation = apply(plan, store)
    if generation is not None:
        click.echo(f"reconciled: configuration generation {generation}", err=True)

    def ready(engine) -> None:
        snap = engine.snapshot
        click.echo(f"listkeeper serving {len(snap.lists)} list(s) for {', '.join(sorted(snap.domains))} "
                   f"on smtp://{host}:{engine.port} (generation {snap.generation}); Ctrl-C stops", err=True)

    options = ServeOptions(host=host, port=port, concurrency=concurrency)
    try:
        asyncio.run(serve_forever(store, options, ready))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    finally:
        store.close()
