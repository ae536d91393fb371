"""Commands over what runs on a schedule: tick, list events, digests, archives, reports."""

from __future__ import annotations


import click

from listkeeper import terminal
from listkeeper.terminal import Column

from . import _moment, _store, keep_finished_option, main, progress_option, store_option


@main.command()
@store_option
@click.option("--at", "at", metavar="TIME", help="Evaluate as of this moment (ISO, UTC unless given).")
@progress_option
@keep_finished_option
def tick(store_url, at, show_progress, keep_finished) -> None:
    """Run one evaluation of every list's events and one round of the periodic jobs (moderation
    expiry, digests, ...): what serve does on its own."""
    from listkeeper.engine.events import tick as run_tick
    from listkeeper.engine.housekeeping import jobs_keeping, run_round
    from listkeeper.engine.snapshot import load_snapshot
    with _store(store_url) as store:
        snapshot = load_snapshot(store)
        moment = _moment(at)
        bar = terminal.progress(terminal.wants_progress(show_progress), unit="subscriber events")
        with bar:
            task = bar.add_task("events", total=None)
            fired = run_tick(store, snapshot, moment,
                             lambda checked, total: bar.update(task, completed=checked, total=total))
            done = run_round(store, snapshot, moment, jobs_keeping(keep_finished))
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
        if not send:
            spec = snapshot.reports[name]
            with store.engine.connect() as conn:
                return reports.build(conn, name, spec, start if start is not None else
                                     reports.period_start(conn, name, spec, now), now)
        try:
            with store.writing() as conn:
                built, post = reports.run_now(conn, snapshot, name, now, start)
                store_queue.insert_posts(conn, [(None, snapshot.generation, post)], now)
        except reports.AlreadySent as taken:
            return taken
    return built


def _why_not_queued(taken) -> str:
    import datetime
    if taken.ahead:
        at = datetime.datetime.fromtimestamp(taken.at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"its last run is recorded at {at}, not before now: a node's clock may run ahead."
    if taken.trigger == "start":
        return "the report's schedule was just started and nothing has been sent yet; run it again to send now."
    return f"a {taken.trigger} run recorded meanwhile took the period up to {_when_utc(taken.at)}."


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
    """Send the report now: queued for its recipients, covering the time since its last run (or --since).
    Exit 3 when another run took the period and nothing was queued."""
    import sys
    from listkeeper.notify.reports import AlreadySent, subject_of
    built = _report(store_url, name, since, send=True)
    if isinstance(built, AlreadySent):
        click.echo(f"{name}: nothing queued: {_why_not_queued(built)}")
        sys.exit(3)
    click.echo(f"{name}: {len(built.table.rows)} row(s) queued for {', '.join(built.spec.recipients)}: "
               f"{subject_of(built)}")
