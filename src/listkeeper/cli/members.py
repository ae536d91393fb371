"""Commands over a list's members: show, import, export, enable, bounces, and moderation of held posts."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from listkeeper import terminal
from listkeeper.terminal import Column

from . import _store, main, progress_option, store_option


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
    from listkeeper import notify
    from listkeeper.store import subscribers
    with _store(store_url) as store:
        with store.writing() as conn:
            member = subscribers.get(conn, list_name, address)
            enabled = subscribers.enable(conn, list_name, address, store.now(), "cli")
            if enabled:
                notify.on_commit(conn, "subscription.changed", list=list_name, address=member.address,
                                 action="enabled", source="cli")
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
        with store.writing() as conn:
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
