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
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--against", "revision", metavar="REV",
              help="Plan against the manifests at this git revision instead of the store (implies --dry-run).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="With --dry-run: save the plan as JSON.")
@click.option("--plan", "plan_file", type=click.Path(exists=True, dir_okay=False),
              help="Apply exactly this saved plan; refused if the store changed since it was made.")
@click.option("--lock-timeout", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to wait for another reconcile to finish.")
@click.option("--retention-days", default=30.0, show_default=True, type=click.FloatRange(0),
              help="How long a deleted list's runtime data stays restorable.")
def reconcile(paths, store_url, dry_run, prune, detailed_exitcode, output, revision, out_file, plan_file,
              lock_timeout, retention_days) -> None:
    """Show (--dry-run) or apply the difference between the manifests and the store."""
    from listkeeper import reconcile as rc
    from listkeeper.reconcile.against import RevisionError, applied_at_revision
    from listkeeper.reconcile.saved import SavedPlanError, load_saved_plan
    from listkeeper.store.config import LockTimeout

    def show(found) -> None:
        click.echo(found.json() if output == "json" else found.text())

    if plan_file:
        store = _open_store(store_url)
        try:
            generation = rc.apply_saved(load_saved_plan(Path(plan_file)), store, lock_timeout)
        except (SavedPlanError, rc.StalePlan, rc.ApplyError, LockTimeout) as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            store.close()
        click.echo(f"Applied {plan_file}: configuration generation {generation}." if generation
                   else f"{plan_file} changes nothing.")
        sys.exit(2 if detailed_exitcode and generation else 0)
    manifests = _load(paths)
    if revision:
        store = _open_store(store_url) if store_url else None
        try:
            applied = applied_at_revision(revision, paths or DEFAULT_PATHS)
            found = rc.review_against(manifests, applied, revision, store, prune)
        except RevisionError as exc:
            raise click.ClickException(f"--against {revision}: {exc}") from None
        finally:
            if store is not None:
                store.close()
    else:
        store = _open_store(store_url)
        try:
            if dry_run:
                found = rc.review(manifests, store, prune, retention_days)
            else:
                shown = []
                generation = rc.reconcile(manifests, store, prune, lock_timeout, retention_days,
                                          lambda r: (shown.append(r), show(r)))
                found = shown[0]
                if generation is not None:
                    click.echo(f"Applied: configuration generation {generation}.", err=output == "json")
        except (rc.ApplyError, LockTimeout) as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            store.close()
    if revision or dry_run:
        show(found)
        if out_file:
            Path(out_file).write_text(found.json() + "\n", encoding="utf-8")
    if detailed_exitcode and found.plan.has_changes:
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
    from listkeeper.reconcile import reconcile as reconcile_store
    from listkeeper.store.config import LockTimeout
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("mail.log", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    manifests = _load(paths)
    store = _open_store(store_url)
    try:
        generation = reconcile_store(manifests, store, prune)
    except LockTimeout as exc:
        raise click.ClickException(str(exc)) from None
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
