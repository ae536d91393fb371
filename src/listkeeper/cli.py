"""The command line: parses, calls, prints. No decisions here."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from listkeeper import terminal
from listkeeper.manifests import ManifestErrors, load_manifests
from listkeeper.manifests.schema import write_schemas
from listkeeper.terminal import Column

DEFAULT_PATHS = ("lists.d", "routes.d")
store_option = click.option("--store", "store_url", envvar="LISTKEEPER_STORE", default=None,
                            help="Store URL (default sqlite:///var/listkeeper.db; env LISTKEEPER_STORE).")
progress_option = click.option("--progress/--no-progress", "show_progress", default=None,
                               help="Draw a progress bar on stderr (default: only when stderr is a terminal).")


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
@click.option("--reference", "reference", type=click.Path(dir_okay=False), default="docs/reference.md",
              show_default=True, help="Where to write the manifest reference (Markdown).")
def schema(out: str, reference: str) -> None:
    """Write one JSON Schema (draft 2020-12) per manifest kind, and the manifest reference."""
    from listkeeper.manifests.reference import write_reference
    try:
        for path in write_schemas(Path(out)):
            click.echo(str(path))
        click.echo(str(write_reference(Path(reference))))
    except OSError as exc:
        raise click.ClickException(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None


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
                                          lambda r: (shown.append(r), show(r)),
                                          origin=_origin("reconcile", "cli", paths))
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
            try:
                Path(out_file).write_text(found.json() + "\n", encoding="utf-8")
            except OSError as exc:
                raise click.ClickException(f"cannot write {out_file}: {exc.strerror or exc}") from None
    if detailed_exitcode and found.plan.has_changes:
        sys.exit(2)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@store_option
@click.option("--host", default="127.0.0.1", show_default=True, help="SMTP listen address.")
@click.option("--port", default=2525, show_default=True, type=click.IntRange(0, 65535), help="SMTP port.")
@click.option("--prune", is_flag=True, help="Let the reconciles (at start and on reload) delete resources.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", default="text", show_default=True, type=click.Choice(["text", "json"]),
              help="text: one readable line per record; json: one JSON object per line, each with a stable "
                   "`event` name and the ids that follow a post from acceptance to each delivery.")
@click.option("--uvloop", "use_uvloop", is_flag=True, help="Run on uvloop (pip install 'listkeeper[fast]').")
@click.option("--tick-interval", default=300.0, show_default=True, type=click.FloatRange(min=0.05),
              help="Seconds between evaluations of list events.")
@click.option("--http-host", default="127.0.0.1", show_default=True,
              help="Listen address of the one-click unsubscribe pages.")
@click.option("--http-port", default=8025, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the one-click unsubscribe pages (0: any free port).")
@click.option("--no-http", is_flag=True, help="No HTTP listener (another node serves the unsubscribe links).")
@click.option("--base-url", metavar="URL", callback=lambda ctx, param, value: _base_url(value),
              help="Public address of the HTTP listener, e.g. https://lists.example.org, that one-click "
                   "unsubscribe links start with (a Domain's web_base_url wins). Default: http://HOST:PORT.")
@click.option("--no-watch", is_flag=True,
              help="Do not watch PATHS; reload on SIGHUP (and new store generations) only.")
@click.option("--node", metavar="NAME", help="This engine's name in `listkeeper status` and in the leases it "
              "holds (default HOST:PORT); unique among the nodes on one store.")
@click.option("--lease", default=60.0, show_default=True, type=click.FloatRange(min=1.0),
              help="Seconds a delivery claimed by this node stays its own unless renewed; a stopped node's "
                   "deliveries pass to the other nodes after this.")
@click.option("--stop-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.0),
              help="On SIGTERM or Ctrl-C, seconds the sends in flight get to finish; what was not sent is "
                   "put back in the queue at once.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate chain: the SMTP listener offers STARTTLS.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False),
              help="The certificate's PEM private key (default: in --tls-cert).")
@click.option("--plaintext-auth", default="loopback", show_default=True,
              type=click.Choice(["never", "loopback", "always"]),
              help="SMTP AUTH (SmtpAccounts) without TLS: never, for clients on this host, or always. "
                   "After STARTTLS it is always offered.")
def serve(paths, store_url, host, port, prune, log_level, log_format, use_uvloop, tick_interval, http_host,
          http_port, no_http, base_url, no_watch, node, lease, stop_timeout, tls_cert, tls_key,
          plaintext_auth) -> None:
    """Reconcile, then accept SMTP, deliver and serve one-click unsubscribe. Changes to PATHS (or
    SIGHUP) are validated and reconciled while running; an invalid change is refused, with its errors."""
    from listkeeper.engine.reload import ReloadOptions, node_name
    from listkeeper.engine.server import CertificateUnreadable, ServeOptions, serve_forever
    from listkeeper.engine.web import WebListenError
    from listkeeper.logs import configure, note
    from listkeeper.reconcile import reconcile as reconcile_store
    from listkeeper.store.config import LockTimeout
    if tls_key is not None and tls_cert is None:
        raise click.UsageError("--tls-key needs --tls-cert (the certificate the key belongs to)")
    configure(log_level, log_format)
    serve_log = logging.getLogger("listkeeper.serve")

    def say(text: str, event: str, **fields) -> None:
        """What serve tells the operator: a line on stderr, or in JSON format a record like every other."""
        if log_format == "json":
            note(serve_log, event, text=text, **fields)
        else:
            click.echo(text, err=True)

    manifests = _load(paths)
    if plaintext_auth == "never" and tls_cert is None and manifests.of_kind("SmtpAccount"):
        say("SMTP AUTH will not be offered: --plaintext-auth never and no --tls-cert for STARTTLS",
            "serve.auth_unavailable")
    store = _open_store(store_url)
    try:
        generation = reconcile_store(manifests, store, prune,
                                     origin=_origin(node_name(node, port), "start", paths))
    except LockTimeout as exc:
        raise click.ClickException(str(exc)) from None
    if generation is not None:
        say(f"reconciled: configuration generation {generation}", "serve.reconciled", generation=generation)

    def ready(engine) -> None:
        snap = engine.snapshot
        if generation is not None:  # announced once the engine listens, so its Notifications see it
            from listkeeper import notify
            notify.emit("config.applied", generation=generation, source="serve")
        if engine.web is not None:
            say(f"one-click unsubscribe on {engine.web.url}{'' if not base_url else ' as ' + base_url}",
                "serve.http", url=engine.web.url)
            say(f"metrics on {engine.web.url}/metrics, health on {engine.web.url}/healthz", "serve.metrics",
                url=f"{engine.web.url}/metrics")
        say(f"config: {'watching' if not no_watch else 'not watching (--no-watch)'} "
            f"{', '.join(paths or DEFAULT_PATHS)}; SIGHUP reloads; node {engine.follower.node}", "serve.config",
            node=engine.follower.node)
        say(f"listkeeper serving {len(snap.lists)} list(s) for {', '.join(sorted(snap.domains))} "
            f"on smtp://{host}:{engine.port} (generation {snap.generation}); Ctrl-C stops", "serve.ready",
            smtp=f"{host}:{engine.port}", generation=snap.generation)

    options = ServeOptions(host=host, port=port, tick_interval=tick_interval, http_host=http_host,
                           http_port=None if no_http else http_port, base_url=base_url, node=node, lease=lease,
                           stop_timeout=stop_timeout,
                           tls_cert=tls_cert, tls_key=tls_key, plaintext_auth=plaintext_auth,
                           reload=ReloadOptions(tuple(paths or DEFAULT_PATHS), watch=not no_watch, prune=prune))
    run = asyncio.run
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            raise click.ClickException("--uvloop needs uvloop: pip install 'listkeeper[fast]'") from None
        run = uvloop.run
    try:
        run(serve_forever(store, options, ready))
    except WebListenError as exc:
        raise click.ClickException(exc.strerror) from None
    except CertificateUnreadable as exc:
        raise click.ClickException(str(exc)) from None
    except ssl.SSLError as exc:
        raise click.ClickException(f"cannot use the TLS certificate {tls_cert} (a PEM chain, its key in it or in "
                                   f"--tls-key): {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    finally:
        store.close()


@main.command("hash-password")
def hash_password() -> None:
    """Read a password (prompted, or one line on stdin) and print its argon2id hash, for an
    SmtpAccount's password secret."""
    from listkeeper.manifests.passwords import hash_password as argon2id
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        line = sys.stdin.buffer.readline().rstrip(b"\r\n")
        try:
            password = line.decode("utf-8")
        except UnicodeDecodeError:  # clients send their password's bytes, and hashes are made of UTF-8
            raise click.ClickException("the password is not UTF-8 text") from None
    if not password:
        raise click.ClickException("an empty password cannot be hashed")
    click.echo(argon2id(password))


def _origin(who: str, trigger: str, paths: tuple[str, ...]):
    from listkeeper.store.config_history import Origin
    return Origin(who, trigger, tuple(paths or DEFAULT_PATHS))


def _base_url(value: str | None) -> str | None:
    import re
    from listkeeper.manifests.domains import BASE_URL_PATTERN
    if value is not None and not re.match(BASE_URL_PATTERN, value):
        raise click.BadParameter(f"{value!r} is not an http(s) URL such as https://lists.example.org")
    return value.rstrip("/") if value else None


@main.group(invoke_without_command=True)
@store_option
@click.pass_context
def queue(ctx, store_url) -> None:
    """The delivery queue: counts by state and destination (see also show, retry, drop)."""
    ctx.obj = store_url
    if ctx.invoked_subcommand is not None:
        return
    from listkeeper.store import queue as store_queue
    with _store(store_url) as store:
        with store.engine.connect() as conn:
            rows = store_queue.counts_by_state_and_transport(conn)
    if not rows:
        click.echo("The queue is empty.")
        return
    terminal.show(terminal.table([Column("state"), Column("destination"), Column("deliveries", "right")], rows))


@queue.command("show")
@click.argument("delivery_id", type=int)
@click.pass_obj
def queue_show(store_url, delivery_id) -> None:
    """One delivery: recipient, state, attempts, next attempt, last error."""
    import datetime
    from listkeeper.store import queue as store_queue
    with _store(store_url) as store:
        with store.engine.connect() as conn:
            row = store_queue.delivery(conn, delivery_id)
    if row is None:
        raise click.ClickException(f"no delivery {delivery_id}")

    def when(ts):
        return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="seconds") if ts else "-"

    for label, value in (("delivery", row["id"]), ("post", row["message_id"]), ("list", row["list_name"] or "-"),
                         ("recipient", row["recipient"]), ("return path", row["return_path"] or "<>"),
                         ("state", row["state"]), ("attempts", row["attempts"]),
                         ("next attempt", when(row["next_attempt_at"])), ("destination", row["transport"] or "-"),
                         ("last error", row["last_error"] or "-"), ("queued at", when(row["created_at"]))):
        click.echo(f"{label + ':':<14}{value}")


@queue.command("retry")
@click.option("--failed", "which", flag_value="failed", default=True, help="Failed deliveries (default).")
@click.option("--all", "which", flag_value="all", help="Every delivery, delivered ones included: send again.")
@click.option("--post", "post_id", type=int, help="Only the deliveries of this post.")
@click.pass_obj
def queue_retry(store_url, which, post_id) -> None:
    """Set deliveries back to unsent, due now."""
    from listkeeper.store import queue as store_queue
    with _store(store_url) as store:
        with store.engine.begin() as conn:
            count = store_queue.retry(conn, store.now(), failed_only=which == "failed", post_id=post_id)
    click.echo(f"{count} deliver{'y' if count == 1 else 'ies'} queued again.")


@queue.command("wait")
@click.argument("post_id", type=int, required=False)
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(min=0), metavar="S",
              help="Give up after this many seconds.")
@click.option("--interval", default=0.5, show_default=True, type=click.FloatRange(min=0.01), metavar="S",
              help="Seconds between looks at the queue.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@progress_option
@click.pass_obj
def queue_wait(store_url, post_id, timeout, interval, output, show_progress) -> None:
    """Wait until every delivery of a post (default: the newest) is delivered or failed. Exit 0 when all
    were delivered, 1 when some failed, 2 when the timeout came first."""
    import json
    from listkeeper.delivery.progress import follow
    from listkeeper.store import tracking
    with _store(store_url) as store:
        with store.engine.connect() as conn:
            if post_id is None:
                post_id = tracking.newest_post(conn)
                if post_id is None:
                    raise click.ClickException("no post has been queued for delivery yet")
            elif not tracking.exists(conn, post_id):
                raise click.ClickException(f"no post {post_id}")
        bar = terminal.progress(terminal.wants_progress(show_progress), unit="deliveries")
        with bar:
            task = bar.add_task(f"post {post_id}", total=None)
            found = follow(store, post_id, timeout, interval=interval,
                           on_update=lambda now: bar.update(task, total=now.total or None, completed=now.done))
        with store.engine.connect() as conn:
            failed = tracking.failures(conn, post_id, 20)
    if output == "json":
        click.echo(json.dumps({"post": post_id, "by_state": dict(sorted(found.by_state.items())),
                               "total": found.total, "over": found.over, "timed_out": found.timed_out,
                               "failed": [{"recipient": r, "error": e} for r, e in failed]}, indent=2))
    else:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(found.by_state.items())) or "no deliveries"
        verdict = ("all delivered" if found.exit_code == 0 else "some failed" if found.exit_code == 1
                   else f"not over after {timeout:g} s")
        click.echo(f"post {post_id}: {found.total} deliver{'y' if found.total == 1 else 'ies'}: {counts}; {verdict}.")
        for recipient, error in failed:
            click.echo(f"  failed: {recipient}: {error}")
        more = found.by_state.get("failed", 0) - len(failed)
        if more > 0:
            click.echo(f"  … and {more} more failed (listkeeper queue retry --post {post_id} sends them again)")
    sys.exit(found.exit_code)


@queue.command("drop")
@click.argument("delivery_id", type=int)
@click.pass_obj
def queue_drop(store_url, delivery_id) -> None:
    """Remove one delivery from the queue."""
    from listkeeper.store import queue as store_queue
    with _store(store_url) as store:
        with store.engine.begin() as conn:
            dropped = store_queue.drop(conn, delivery_id)
    if not dropped:
        raise click.ClickException(f"no delivery {delivery_id} that can be dropped (it may be sending)")
    click.echo(f"Delivery {delivery_id} dropped.")


@main.group()
def suppress() -> None:
    """Addresses never sent to, added at run time (SuppressionList manifests add more)."""


@suppress.command("add")
@click.argument("addresses", nargs=-1, required=True)
@click.option("--reason", default="added by an operator", show_default=True)
@store_option
def suppress_add(addresses, reason, store_url) -> None:
    from listkeeper.store import suppressions
    with _store(store_url) as store:
        with store.engine.begin() as conn:
            for address in addresses:
                added = suppressions.add(conn, address, reason, store.now())
                click.echo(f"{address}: {'suppressed' if added else 'already suppressed'}")


@suppress.command("remove")
@click.argument("addresses", nargs=-1, required=True)
@store_option
def suppress_remove(addresses, store_url) -> None:
    from listkeeper.store import suppressions
    with _store(store_url) as store:
        with store.engine.begin() as conn:
            for address in addresses:
                click.echo(f"{address}: {'removed' if suppressions.remove(conn, address) else 'not suppressed'}")


@suppress.command("list")
@store_option
def suppress_list(store_url) -> None:
    from listkeeper.store import suppressions
    with _store(store_url) as store:
        with store.engine.connect() as conn:
            rows = suppressions.listing(conn)
    for address, reason, _ in rows:
        click.echo(f"{address}\t{reason}")
    if not rows:
        click.echo("No runtime suppressions.")


class _ShowByDefault(click.Group):
    """`members LIST` is `members show LIST`; `members import|export ...` are subcommands."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().resolve_command(ctx, args)


@main.group(cls=_ShowByDefault)
def members() -> None:
    """A list's members: show them (the default), import or export them."""


@members.command("show")
@click.argument("list_name")
@store_option
@click.option("--preview", is_flag=True, help="Run a dynamic list's query now instead of showing the last selection.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(0), help="Addresses to print.")
def members_show(list_name, store_url, preview, limit) -> None:
    """Who a list reaches: its subscribers, or for a dynamic list the selection of its last post
    (or, with --preview, its query run now)."""
    import datetime
    from listkeeper.engine.membership import receivers
    from listkeeper.engine.snapshot import load_snapshot
    from listkeeper.store import queue as store_queue
    from listkeeper.store import subscribers
    from listkeeper.store.directory import DirectoryError
    with _store(store_url) as store:
        snapshot = load_snapshot(store)
        lst = next((item for item in snapshot.lists.values() if item.name == list_name), None)
        if lst is None:
            raise click.ClickException(f"no list {list_name!r} in the applied configuration")
        if lst.spec.members is None:
            with store.engine.connect() as conn:
                rows = subscribers.members(conn, list_name)
            receiving = sum(1 for m in rows if m.receiving)
            shown = terminal.table(
                [Column("address"), Column("roles"), Column("receives"), Column("state"), Column("source")],
                [(m.address, ",".join(sorted(m.roles)), m.receives or "-", m.state, m.source) for m in rows[:limit]],
                indent=2)
            terminal.show(terminal.lines(f"{receiving} receiving member(s) of {len(rows)}:", shown,
                                         *([f"  … and {len(rows) - limit} more"] if len(rows) > limit else [])))
            return
        if not preview:
            with store.engine.connect() as conn:
                found = store_queue.last_selection(conn, list_name, limit)
            if found is None:
                click.echo(f"No post has been distributed to {list_name} yet; try --preview.")
                return
            post_id, at, total, addresses = found
            when = datetime.datetime.fromtimestamp(at, datetime.timezone.utc).isoformat(timespec="seconds")
            click.echo(f"{total} member(s) selected for post {post_id} at {when}:")
        else:
            chosen = receivers(lst, snapshot, store.now())
            try:
                with store.engine.connect() as conn:
                    addresses, total = [], 0
                    for address in chosen(conn):
                        total += 1
                        if len(addresses) < limit:
                            addresses.append(address)
            except (DirectoryError, Exception) as exc:  # noqa: BLE001 - the directory is the operator's
                raise click.ClickException(f"cannot run the query of {list_name}: {exc}") from None
            click.echo(f"{total} member(s) selected now:")
    for address in sorted(addresses):
        click.echo(f"  {address}")
    if total > len(addresses):
        click.echo(f"  … and {total - len(addresses)} more")


@members.command("enable")
@click.argument("list_name")
@click.argument("address")
@store_option
def members_enable(list_name, address, store_url) -> None:
    """Deliver to a member again whose delivery was disabled (e.g. by bounces); clears their bounce score."""
    from listkeeper.store import subscribers
    with _store(store_url) as store:
        with store.engine.begin() as conn:
            member = subscribers.get(conn, list_name, address)
            enabled = subscribers.enable(conn, list_name, address, store.now(), "cli")
    if member is None:
        raise click.ClickException(f"{address} is not a member of {list_name}")
    if not enabled:
        raise click.ClickException(f"{address} is {member.state} on {list_name}, not disabled; nothing changed")
    click.echo(f"{member.address}: delivery of {list_name} enabled again; bounce score cleared.")


def _when(ts: float | None) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M") if ts else "-"


@main.command("bounces")
@click.argument("list_name")
@click.option("--member", "member", metavar="ADDRESS", help="This subscriber's bounces, newest first.")
@click.option("--all", "everyone", is_flag=True, help="Every subscriber, also those who never bounced.")
@store_option
def bounces_cmd(list_name, member, everyone, store_url) -> None:
    """A list's bounce scores: address, score, last bounce, delivery state."""
    from listkeeper.engine.snapshot import load_snapshot
    from listkeeper.store import bounces as store_bounces
    with _store(store_url) as store:
        lst = next((item for item in load_snapshot(store).lists.values() if item.name == list_name), None)
        if lst is None:
            raise click.ClickException(f"no list {list_name!r} in the applied configuration")
        now = store.now()
        with store.engine.connect() as conn:
            if member:
                rows = store_bounces.history(conn, list_name, member.lower())
            else:
                rows = store_bounces.entries(conn, list_name, everyone)
    rules = lst.spec.bounces
    if member:
        for row in rows:
            click.echo(f"{_when(row['at'])}  {row['kind']:<5} {'counted' if row['counted'] else 'ignored':<8} "
                       f"{row['detail'] or ''}")
        if not rows:
            click.echo(f"No bounces recorded for {member} on {list_name}.")
        return
    click.echo(f"{list_name}: disabled at {rules.threshold:g}; hard +{rules.hard:g}, soft +{rules.soft:g}, once a day; "
               f"stale after {rules.stale_after / 86400:g} day(s) without a bounce")
    if not rows:
        click.echo("No subscriber has bounced.")
        return
    click.echo(f"{'address':<40} {'score':>6}  {'last bounce':<17} {'hard':>5} {'soft':>5}  state")
    for e in rows:
        stale = e.state == "active" and e.score and e.last_at is not None and now - e.last_at >= rules.stale_after
        click.echo(f"{e.address:<40} {e.score:>6g}  {_when(e.last_at):<17} {e.hard:>5} {e.soft:>5}  {e.state}"
                   + (" (score stale)" if stale else ""))
def _static_list(store, list_name: str):
    """The applied list a roster belongs to: it must exist and take its members from subscribers, not a query."""
    from listkeeper.engine.snapshot import load_snapshot
    lst = next((item for item in load_snapshot(store).lists.values() if item.name == list_name), None)
    if lst is None:
        raise click.ClickException(f"no list {list_name!r} in the applied configuration")
    if lst.spec.members is not None:
        raise click.ClickException(f"{list_name} is a dynamic list: its regular members come from its query "
                                   "(spec.members), so it has no roster to import or export")
    return lst


@members.command("import")
@click.argument("list_name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@store_option
@click.option("--quiet", is_flag=True, help="No progress bar (the same as --no-progress).")
@progress_option
def members_import(list_name, file, store_url, quiet, show_progress) -> None:
    """Add or update a list's subscribers from a CSV roster (address,name,roles,state), as members export
    writes it. Running it again changes nothing. Lines that cannot be imported are named; exit 1 if any."""
    import io
    import os
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from listkeeper.store import imports, roster
    shown = not quiet and terminal.wants_progress(show_progress)
    console = Console(stderr=True, force_terminal=shown or None)
    with _store(store_url) as store:
        _static_list(store, list_name)
        try:
            raw = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise click.ClickException(f"cannot read {file}: {exc.strerror or exc}") from None
        size = os.fstat(raw.fileno()).st_size if file != "-" else None
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        bar = Progress(TextColumn("importing into {task.description}"), BarColumn(),
                       TextColumn("{task.fields[rows]} rows"), TimeRemainingColumn(), console=console,
                       disable=not shown)
        try:
            with bar:
                task = bar.add_task(list_name, total=size or None, rows=0)

                def advance(report) -> None:
                    bar.update(task, completed=raw.tell() if size else 0, rows=report.rows)

                report = imports.import_roster(store, list_name, roster.read(text), on_chunk=advance)
                bar.update(task, completed=size or 0)
        except roster.RosterError as exc:
            raise click.ClickException(f"{file}: {exc}; rows before it were imported, run again once it is "
                                       "fixed") from None
        except OSError as exc:
            raise click.ClickException(f"cannot read {file}: {exc.strerror or exc}; rows before the error were "
                                       "imported, run again once it is readable") from None
        finally:
            if file != "-":
                text.close()
    for item in sorted([*report.problems, *report.notes]):
        click.echo(str(item), err=True)
    counts = [f"{report.added} added", f"{report.updated} updated", f"{report.unchanged} unchanged"]
    if report.skipped:
        counts.append(f"{report.skipped} skipped (manifest)")
    if report.problems:
        counts.append(f"{len(report.problems)} line(s) not imported")
    if report.changed:
        click.echo(f"{file} into {list_name}: {', '.join(counts)}; {report.joined} joined, {report.left} left.")
    else:
        click.echo(f"{file} into {list_name}: nothing changed ({', '.join(counts[2:])}).")
    if report.problems:
        raise SystemExit(1)


@members.command("export")
@click.argument("list_name")
@click.argument("file", required=False, default="-", type=click.Path(dir_okay=False, allow_dash=True))
@store_option
def members_export(list_name, file, store_url) -> None:
    """Write a list's subscribers as a CSV roster (address,name,roles,state) to FILE or stdout;
    members import reads it back."""
    import io
    import os
    from listkeeper.store import imports, roster
    with _store(store_url) as store:
        _static_list(store, list_name)
        with store.engine.connect() as conn:
            rows = imports.exported(conn, list_name)
            if file == "-":
                out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
                roster.write(rows, out)
                out.detach()
                return
            path = Path(file)
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            try:  # written aside and renamed: an interrupted export never leaves half a file under FILE's name
                with open(partial, "w", encoding="utf-8", newline="") as out:
                    count = roster.write(rows, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(partial, path)
            except OSError as exc:
                raise click.ClickException(f"cannot write {file}: {exc.strerror or exc}") from None
            finally:
                partial.unlink(missing_ok=True)
    click.echo(f"{count} member(s) of {list_name} written to {file}.")


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


@main.command()
@store_option
@click.option("--at", "at", metavar="TIME", help="Evaluate as of this moment (ISO, UTC unless given).")
@progress_option
def tick(store_url, at, show_progress) -> None:
    """Run one evaluation of every list's events and one round of the periodic jobs (moderation
    expiry, digests, ...): what serve does on its own."""
    from listkeeper.engine.events import tick as run_tick
    from listkeeper.engine.housekeeping import run_round
    from listkeeper.engine.snapshot import load_snapshot
    with _store(store_url) as store:
        snapshot = load_snapshot(store)
        moment = _moment(at)
        bar = terminal.progress(terminal.wants_progress(show_progress), unit="subscriber events")
        with bar:
            task = bar.add_task("events", total=None)
            fired = run_tick(store, snapshot, moment,
                             lambda checked, total: bar.update(task, completed=checked, total=total))
            done = run_round(store, snapshot, moment)
    for item in fired:
        click.echo(f"{item.list_name}/{item.event}: fired for {item.count}")
    for job, count in done.queued.items():
        click.echo(f"{job}: queued {count} message(s)")
    for job in done.failed:
        click.echo(f"{job}: failed (see the log)", err=True)
    if not fired and not done.queued:
        click.echo("Nothing was due.")
    if done.failed:
        raise SystemExit(1)


@main.group()
def moderation() -> None:
    """Held posts: list them, approve, reject or discard (as moderators do by mail)."""


@moderation.command("list")
@click.argument("list_name", required=False)
@store_option
def moderation_list(list_name, store_url) -> None:
    """Held posts with their tokens, oldest first."""
    import datetime
    from listkeeper.engine import moderation as held
    with _store(store_url) as store:
        with store.engine.connect() as conn:
            rows = held.pending(conn, list_name)
    if not rows:
        click.echo("No posts are held." if list_name is None else f"No posts of {list_name} are held.")
        return
    click.echo(f"{'token':<26}{'list':<16}{'held at (UTC)':<22}{'sender':<32}subject / reason")
    for row in rows:
        when = datetime.datetime.fromtimestamp(row["created_at"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{row['token']:<26}{row['list_name']:<16}{when:<22}{row['sender']:<32}{row['subject']}")
        click.echo(f"{'':<64}{row['reason']}")


def _moderate(token: str, decision: str, reason: str, store_url) -> None:
    from listkeeper.engine import moderation as held
    from listkeeper.engine.snapshot import load_snapshot
    from listkeeper.store import queue as store_queue
    with _store(store_url) as store:
        snapshot = load_snapshot(store)
        now = store.now()
        with store.engine.begin() as conn:
            found = held.find(conn, token)
            if found is None:
                raise click.ClickException(f"no post is held with token {token}")
            outcome = held.decide(conn, snapshot, token, decision, "cli", now, reason)
            store_queue.insert_posts(conn, [(found["message_id"], snapshot.generation, p) for p in outcome.posts], now)
    click.echo(outcome.text)


@moderation.command("approve")
@click.argument("token")
@store_option
def moderation_approve(token, store_url) -> None:
    """Distribute a held post to the list's members of now."""
    _moderate(token, "approve", "", store_url)


@moderation.command("reject")
@click.argument("token")
@click.option("--reason", default="", help="Told to the sender.")
@store_option
def moderation_reject(token, reason, store_url) -> None:
    """Refuse a held post; its sender is told, with the reason."""
    _moderate(token, "reject", reason, store_url)


@moderation.command("discard")
@click.argument("token")
@store_option
def moderation_discard(token, store_url) -> None:
    """Drop a held post silently (spam)."""
    _moderate(token, "discard", "", store_url)


@main.group()
def events() -> None:
    """List events: counters and firing by hand."""


@events.command("show")
@click.argument("list_name")
@click.option("--member", "member", help="Only this subscriber.")
@store_option
def events_show(list_name, member, store_url) -> None:
    """How often each event fired for each subscriber who receives the list (or --member)."""
    from listkeeper.store import events as store_events
    with _store(store_url) as store:
        with store.engine.connect() as conn:
            members = [member.lower()] if member else store_events.list_subscribers(conn, list_name)
            counts = store_events.counters(conn, list_name, members if member else None)
    names = sorted({e for a in members for e in counts.get(a, {})})
    terminal.show(terminal.table([Column("subscriber"), *(Column(n, "right") for n in names)],
                                 [(a, *(counts.get(a, {}).get(n, 0) for n in names)) for a in members]))


@events.command("fire")
@click.argument("list_name")
@click.argument("event_name")
@click.option("--member", "members", multiple=True, help="Fire for this subscriber (repeatable).")
@click.option("--all", "everyone", is_flag=True, help="Fire for every subscriber.")
@click.option("--at", "at", metavar="TIME", help="Record the fire at this moment.")
@store_option
def events_fire(list_name, event_name, members, everyone, at, store_url) -> None:
    """Fire an event by hand, whatever its dependencies say."""
    from listkeeper.engine.events import fire_by_hand
    from listkeeper.engine.snapshot import load_snapshot
    if bool(members) == everyone:
        raise click.UsageError("give --member ADDRESS or --all")
    with _store(store_url) as store:
        try:
            fired = fire_by_hand(store, load_snapshot(store), list_name, event_name,
                                 None if everyone else list(members), _moment(at))
        except LookupError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"{fired.list_name}/{fired.event}: fired for {fired.count}")


# -- digests and the archive -------------------------------------------------------------------------------

def _applied_list(snapshot, list_name: str):
    lst = next((item for item in snapshot.lists.values() if item.name == list_name), None)
    if lst is None:
        raise click.ClickException(f"no list {list_name!r} in the applied configuration")
    return lst


def _when_utc(ts: float | None) -> str:
    import datetime
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@main.group()
def digest() -> None:
    """Digests: what is pending, and sending one now."""


@digest.command("send")
@click.argument("list_name")
@click.option("--at", "at", metavar="TIME", help="Send as of this moment (ISO, UTC unless given).")
@store_option
def digest_send(list_name, at, store_url) -> None:
    """Send the list's pending posts to its digest members now, whatever the schedule."""
    from listkeeper.engine.digests import send_now
    from listkeeper.engine.snapshot import load_snapshot
    from listkeeper.store.directory import DirectoryError
    with _store(store_url) as store:
        snapshot = load_snapshot(store)
        _applied_list(snapshot, list_name)
        try:
            sent = send_now(store, snapshot, list_name, _moment(at))
        except DirectoryError as exc:
            raise click.ClickException(f"cannot check {list_name}'s digest members against its directory: {exc}") \
                from None
    if not sent.issues:
        click.echo(f"{list_name}: nothing sent (no pending posts, or no digest members; pending posts of a list "
                   f"without digest members are dropped).")
        return
    for issue in sent.issues:
        click.echo(f"{list_name}: digest Vol {issue.volume}, Issue {issue.issue} with {issue.posts} post(s), "
                   f"{issue.size} bytes, queued for {sent.recipients} digest member(s)")


@digest.command("status")
@click.argument("list_names", nargs=-1)
@click.option("--at", "at", metavar="TIME", help="As of this moment (ISO, UTC unless given).")
@store_option
def digest_status(list_names, at, store_url) -> None:
    """Per list: pending posts, when the next digest goes out, the last one sent."""
    from listkeeper.engine.digests import due, next_scheduled
    from listkeeper.engine.snapshot import load_snapshot
    from listkeeper.store import digests as store_digests
    with _store(store_url) as store:
        snapshot = load_snapshot(store)
        chosen = [_applied_list(snapshot, name) for name in list_names] or sorted(
            snapshot.lists.values(), key=lambda item: item.name)
        now = _moment(at)
        with store.engine.connect() as conn:
            pending = store_digests.pending_by_list(conn)
            rows = [(lst, pending.get(lst.name), store_digests.last_issue(conn, lst.name),
                     store_digests.has_members(conn, lst.name)) for lst in chosen]
    for lst, waiting, last, members in rows:
        settings = lst.spec.digest
        if waiting is None:
            upcoming = "no posts pending"
        else:
            trigger = due(settings, waiting, now)
            scheduled = next_scheduled(settings, waiting.oldest)
            upcoming = (f"{waiting.posts} post(s), {waiting.size} of {settings.max_size} bytes pending; next: "
                        + (f"due now ({trigger})" if trigger else _when_utc(scheduled) if scheduled else
                           "when the size is reached or by hand"))
        sent = f"last: Vol {last.volume}, Issue {last.issue} at {_when_utc(last.sent_at)}" if last else "none sent yet"
        click.echo(f"{lst.name}: {upcoming}; {sent}; schedule {settings.schedule!r} {settings.timezone}"
                   + ("" if members else "; no digest members"))


@main.command("archive")
@click.argument("list_name")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(0), help="Posts to show, newest last.")
@store_option
def archive_list(list_name, limit, store_url) -> None:
    """The list's archive: date, sender, subject and Message-ID of its last posts, newest last."""
    from listkeeper.engine.archive import entries
    from listkeeper.engine.snapshot import load_snapshot
    from listkeeper.store import archive as store_archive
    with _store(store_url) as store:
        lst = _applied_list(load_snapshot(store), list_name)
        with store.engine.connect() as conn:
            waiting = store_archive.pending_count(conn, list_name)
    settings = lst.spec.archive
    path = settings.location(list_name)
    if not settings.enabled:
        click.echo(f"{list_name} keeps no archive (spec.archive.enabled is false).")
        return
    try:
        found, total = entries(lst, limit)
    except OSError as exc:
        raise click.ClickException(f"cannot read the archive {path}: {exc}") from None
    click.echo(f"{list_name}: {total} post(s) in {path} ({settings.format.value})"
               + (f"; the last {len(found)}:" if found else "."))
    for e in found:
        sender = e.sender if len(e.sender) <= 32 else e.sender[:31] + "…"
        subject = e.subject if len(e.subject) <= 48 else e.subject[:47] + "…"
        click.echo(f"  {e.date:<16}  {sender:<32}  {subject:<48}  {e.message_id}")
    if waiting:
        click.echo(f"{waiting} accepted post(s) not archived yet: the next housekeeping round writes them "
                   f"(serve runs one every minute; or run 'listkeeper tick').")


# -- reports -----------------------------------------------------------------------------------------------

@main.group()
def report() -> None:
    """Reports: print one, or send it now (serve sends them on their schedules)."""


def _report(store_url, name: str, since: str | None, send: bool):
    from listkeeper.engine.snapshot import load_snapshot
    from listkeeper.notify import reports
    from listkeeper.store import queue as store_queue
    with _store(store_url) as store:
        snapshot = load_snapshot(store)
        if name not in snapshot.reports:
            known = ", ".join(sorted(snapshot.reports)) or "none"
            raise click.ClickException(f"no report {name!r} in the applied configuration (reports: {known})")
        now = store.now()
        start = _moment(since) if since else None
        if start is not None and start >= now:
            raise click.BadParameter(f"{since} is not in the past", param_hint="--since")
        with store.engine.begin() as conn:
            if not send:
                spec = snapshot.reports[name]
                return reports.build(conn, name, spec, start if start is not None else
                                     reports.period_start(conn, name, spec, now), now)
            built, post = reports.run_now(conn, snapshot, name, now, start)
            store_queue.insert_posts(conn, [(None, snapshot.generation, post)], now)
    return built


@report.command("show")
@click.argument("name")
@click.option("--since", metavar="TIME", help="Start of the period (ISO, UTC unless given); default: the last run.")
@store_option
def report_show(name, since, store_url) -> None:
    """Print the report as its next mail would hold it (nothing is sent or recorded)."""
    from listkeeper.notify.reports import render_text
    click.echo(render_text(_report(store_url, name, since, send=False)), nl=False)


@report.command("run")
@click.argument("name")
@click.option("--since", metavar="TIME", help="Start of the period (ISO, UTC unless given); the run is then not "
                                              "recorded, so the scheduled report still covers its whole period.")
@store_option
def report_run(name, since, store_url) -> None:
    """Send the report now: queued for its recipients, covering the time since its last run (or --since)."""
    from listkeeper.notify.reports import subject_of
    built = _report(store_url, name, since, send=True)
    click.echo(f"{name}: {len(built.table.rows)} row(s) queued for {', '.join(built.spec.recipients)}: "
               f"{subject_of(built)}")


# -- hot reload: what the engines run -----------------------------------------------------------------------

@main.command("status")
@store_option
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status_cmd(store_url, output) -> None:
    """The running configuration generation, how and from which files it was applied, the engines on
    this store and the generation each runs, the last rejected reload with its errors, the queue."""
    from listkeeper.engine.status import read_status, status_view
    with _store(store_url) as store:
        with store.engine.connect() as conn:
            found = read_status(conn, store.now())
    if output == "json":
        click.echo(found.json())
    else:
        terminal.show(status_view(found))
