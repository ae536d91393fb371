"""Commands over the configuration and the engine: validate, schema, reconcile, serve, hash-password, status."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from pathlib import Path

import click

from listkeeper import terminal
from listkeeper.manifests.schema import write_schemas

from . import DEFAULT_PATHS, _load, _open_store, _store, keep_finished_option, main, store_option


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
@click.option("--auth-failure-limit", default="10/10m", show_default=True, metavar="N/DURATION",
              callback=lambda ctx, param, value: _failure_limit(value),
              help="Failed SMTP AUTH logins a client address (IPv6: its /64) may make within DURATION, over "
                   "all its connections; past it, AUTH gets 454 unchecked until the window slides. 0: no limit.")
@keep_finished_option
def serve(paths, store_url, host, port, prune, log_level, log_format, use_uvloop, tick_interval, http_host,
          http_port, no_http, base_url, no_watch, node, lease, stop_timeout, tls_cert, tls_key,
          plaintext_auth, auth_failure_limit, keep_finished) -> None:
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
                           auth_failure_limit=auth_failure_limit, keep_finished=keep_finished,
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


def _failure_limit(value: str):
    from listkeeper.engine.login_limit import FailureLimit
    try:
        return FailureLimit.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _base_url(value: str | None) -> str | None:
    import re
    from listkeeper.manifests.domains import BASE_URL_PATTERN
    if value is not None and not re.match(BASE_URL_PATTERN, value):
        raise click.BadParameter(f"{value!r} is not an http(s) URL such as https://lists.example.org")
    return value.rstrip("/") if value else None



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
