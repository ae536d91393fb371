"""Commands over the delivery queue and the runtime suppression list."""

from __future__ import annotations

import sys

import click

from listkeeper import terminal
from listkeeper.terminal import Column

from . import _store, main, progress_option, store_option


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
    were delivered, 1 when some failed, 2 when the timeout came first, 3 when moderation holds the post
    (no deliveries until a moderator approves it) or stopped it (rejected, discarded, expired): nothing
    to wait for."""
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
            moderated = tracking.moderated(conn, post_id)
            held = [name for name, state in moderated.items() if state == "held"]
            if moderated and tracking.delivering_lists(conn, post_id) <= set(moderated):  # notices at most
                _say_moderated(post_id, moderated, output)
                sys.exit(3)
        bar = terminal.progress(terminal.wants_progress(show_progress), unit="deliveries")
        with bar:
            task = bar.add_task(f"post {post_id}", total=None)
            found = follow(store, post_id, timeout, interval=interval,
                           on_update=lambda now: bar.update(task, total=now.total or None, completed=now.done))
        with store.engine.connect() as conn:
            failed = tracking.failures(conn, post_id, 20)
    if output == "json":
        click.echo(json.dumps({"post": post_id, "held": held, "moderation": moderated,
                               "by_state": dict(sorted(found.by_state.items())),
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
        for name, state in moderated.items():
            click.echo(f"  {_STOPPED[state].format(name=name)}"
                       + (f" (listkeeper moderation list {name})" if state == "held" else ""))
    sys.exit(found.exit_code)


_STOPPED = {"held": "held for moderation by {name}", "rejected": "rejected by the moderators of {name}",
            "discarded": "discarded by the moderators of {name}",
            "expired": "held for moderation by {name} and expired undecided"}


def _say_moderated(post_id: int, moderated: dict[str, str], output: str) -> None:
    """Moderation holds or stopped every copy of the post: nothing to wait for."""
    import json
    held = [name for name, state in moderated.items() if state == "held"]
    if output == "json":
        click.echo(json.dumps({"post": post_id, "held": held, "moderation": moderated, "by_state": {}, "total": 0,
                               "over": False, "timed_out": False, "failed": []}, indent=2))
        return
    said = "; ".join(_STOPPED[state].format(name=name) for name, state in moderated.items())
    if held:
        click.echo(f"post {post_id}: {said}; nothing to wait for until a moderator approves it (listkeeper "
                   f"moderation list{' ' + held[0] if len(held) == 1 else ''}).")
    else:
        click.echo(f"post {post_id}: {said}; it will not be delivered.")


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
        with store.writing() as conn:
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
