"""`listkeeper serve`: reconcile, load the snapshot, then run SMTP, the spool and the queue runner."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP

from listkeeper import notify
from listkeeper.logs import note
from listkeeper.delivery.scheduler import Scheduler
from listkeeper.notify import bus as notify_bus
from listkeeper.notify import outbox as notify_outbox
from listkeeper.notify.dispatch import Dispatcher
from listkeeper.store import Store
from listkeeper.store import nodes as store_nodes
from listkeeper.store.queue import InboundRecord, PostRecord
from listkeeper.store.signing import signing_key

from .events import TemplateCopies
from .events import tick as run_tick
from .health import problems
from .housekeeping import jobs_keeping, run_round
from .leadership import Leadership
from .login_limit import FailureLimit, LoginLimiter
from .fanout import Refused, fan_out
from .membership import look_up_in
from .metrics import CONTENT_TYPE, Metrics
from .oneclick import Links
from .recipients import Recipient, accept_recipient
from .retention import KEEP_FINISHED
from .reload import ConfigFollower, Rejection, ReloadOptions, node_name
from .smtp import ListSMTP
from .submission import SubmissionHandler
from .snapshot import Snapshot, load_snapshot
from .spool import Spool
from .web import Operations, WebListener, start_web

log = logging.getLogger("listkeeper.serve")


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 2525
    data_size_limit: int = 64 * 1024 * 1024
    tick_interval: float = 300.0  # list events are evaluated this often
    housekeeping_interval: float = 60.0  # moderation expiry, digests, archives ... run this often
    keep_finished: float = KEEP_FINISHED  # finished deliveries and the messages nothing needs: kept this long
    outbox_interval: float = notify_outbox.INTERVAL  # events of commands run by hand are announced this often
    http_host: str = "127.0.0.1"  # the one-click unsubscribe listener
    http_port: int | None = 8025  # 0: any free port; None: no listener (another node serves the links)
    base_url: str | None = None  # where recipients reach the listener; default: its own address
    reload: ReloadOptions = ReloadOptions()  # what to watch; the store's generation is followed always
    node: str | None = None  # this engine's name in the store (listkeeper status); default host:port
    tls_cert: str | None = None  # PEM certificate chain: the listener offers STARTTLS
    tls_key: str | None = None  # its private key (PEM); default: in tls_cert
    plaintext_auth: str = "loopback"  # SMTP AUTH without TLS: never | loopback (clients on this host) | always
    auth_failure_limit: FailureLimit = FailureLimit(10, 600.0)  # failed logins per client network and window
    lease: float = 60.0  # seconds a claimed delivery stays this node's without renewal (a dead node's work
    # passes to the other nodes after this)
    stop_timeout: float = 10.0  # at stop, sends in flight get this long to finish; the rest is given back


@dataclass
class Engine:
    """The running engine: everything it serves from comes from `snapshot`, swapped whole."""

    store: Store
    options: ServeOptions
    snapshot: Snapshot
    spool: Spool | None = None
    scheduler: Scheduler | None = None
    server: asyncio.base_events.Server | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    web: WebListener | None = None
    handler: SubmissionHandler | None = None
    links: Links | None = None
    notifications: Dispatcher | None = None
    follower: ConfigFollower | None = None
    leadership: Leadership | None = None  # whether this node runs the periodic work (one node at a time)
    # called with each reload refused for invalid manifests (the `config.rejected` event's hook)
    on_config_rejected: Callable[[Rejection], None] | None = None
    metrics: Metrics | None = None  # what /metrics shows; this engine's own registry

    def current(self) -> Snapshot:
        return self.snapshot

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        tls = listener_tls(self.options)  # first: a certificate that cannot be read leaves nothing running
        self.metrics = Metrics(self.store, self.current)
        await self._start_links()
        notify_bus.attach(self.metrics)  # counts list events fired (from ticks and from mail commands)
        self.notifications = Dispatcher(self.current, self.inject, self.store.now, metrics=self.metrics,
                                        store=self.store)
        self.notifications.start()
        self.scheduler = Scheduler(self.store, self.current, inject=self.inject, lease=self.options.lease,
                                   personalise=self.links.personal_copy, templates=TemplateCopies.load)
        self.spool = Spool(self.store, on_commit=self.scheduler.wake)
        self.scheduler.metrics = self.metrics
        handler = SubmissionHandler(self.current, self.spool, self.store.now, self.store,
                                    plaintext_auth=self.options.plaintext_auth, metrics=self.metrics,
                                    limiter=LoginLimiter(self.options.auth_failure_limit))
        self.handler = handler

        def protocol() -> SMTP:  # the hostname is given, so aiosmtpd never calls getfqdn per connection
            return ListSMTP(handler, hostname=self.snapshot.hostname(), ident="listkeeper", decode_data=False,
                            enable_SMTPUTF8=True, data_size_limit=self.options.data_size_limit,
                            tls_context=tls, auth_require_tls=False)  # the handler decides when AUTH is offered

        try:
            self.server = await loop.create_server(protocol, host=self.options.host, port=self.options.port)
        except OSError:
            if self.web is not None:
                await self.web.close()
            await self.notifications.close()
            notify_bus.detach(self.metrics)
            raise
        await self._start_follower()
        self.scheduler.node = self.follower.node  # the leases it claims name this node
        if await asyncio.to_thread(self._named_elsewhere):  # before this node's leadership connection opens
            log.error("another live engine runs as node %s: its deliveries in flight are not released here; "
                      "give each node its own --node", self.follower.node)
            self.scheduler.release_own = False
        self.leadership = Leadership(self.store, self.follower.node)
        self.tasks.append(asyncio.create_task(self.leadership.keep(), name="leadership"))
        self.tasks.append(asyncio.create_task(self.scheduler.keep_leases(), name="delivery-leases"))
        self.tasks.append(asyncio.create_task(self.scheduler.run(), name="delivery-scheduler"))
        self.tasks.append(asyncio.create_task(self._ticks(), name="event-ticks"))
        self.tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self.tasks.append(asyncio.create_task(self._outbox(), name="notify-outbox"))

    async def _start_links(self) -> None:
        """One-click unsubscribe: the listener first, so every link delivery writes points somewhere."""
        key = await asyncio.to_thread(signing_key, self.store.engine, "unsubscribe")
        options = self.options
        if options.http_port is not None:
            self.web = await start_web(self.store, self.current, key, options.http_host, options.http_port,
                                       self._operations())
        base = (options.base_url or (self.web.url if self.web else "")).rstrip("/") or None
        self.links = Links(key, base)
        if options.base_url or all(d.web_base_url for d in self.snapshot.domains.values()):
            return
        if base:
            log.warning("one-click unsubscribe links point at %s; give serve --base-url (or a Domain's "
                        "web_base_url) the public https address recipients reach", base)
        else:
            log.warning("no HTTP listener and no --base-url: posts of domains without web_base_url carry "
                        "only the mailto unsubscribe, no one-click link")

    def _named_elsewhere(self) -> bool:
        with self.store.engine.connect() as conn:
            return store_nodes.named_elsewhere(conn, self.follower.node)

    def _operations(self) -> Operations:
        """/metrics and /healthz on the HTTP listener."""
        async def unhealthy() -> list[str]:
            return await problems(self.store, lambda: self.server, self.metrics.probes)
        return Operations(self.metrics.exposition, CONTENT_TYPE, unhealthy)

    async def _start_follower(self) -> None:
        """Hot reload: follow the files (if given) and the store's generation (always)."""
        self.follower = ConfigFollower(self.store, node_name(self.options.node, self.port), self.options.reload,
                                       self.current, self.install, self._config_rejected,
                                       f"smtp://{self.options.host}:{self.port}", metrics=self.metrics)
        await self.follower.start()

    def install(self, snapshot: Snapshot) -> None:
        """Swap the configuration whole: new sessions and delivery rounds take it, running ones keep theirs."""
        previous, self.snapshot = self.snapshot, snapshot
        if previous is not None and snapshot.generation != previous.generation:
            notify.emit("config.applied", generation=snapshot.generation, source="reload")

    def _config_rejected(self, rejection: Rejection) -> None:
        notify.emit("config.rejected", error="\n".join(rejection.errors[:20]), errors=len(rejection.errors),
                    source=rejection.trigger)
        if self.on_config_rejected is not None:
            self.on_config_rejected(rejection)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.options.housekeeping_interval)
            if not self.leadership.leading:  # another node runs it
                continue
            done = await asyncio.to_thread(run_round, self.store, self.snapshot, self.store.now(),
                                           jobs_keeping(self.options.keep_finished))
            if done.queued:
                self.scheduler.wake()

    async def _outbox(self) -> None:
        """What commands run by hand in other processes committed reaches this engine's Notifications."""
        while True:
            await asyncio.sleep(self.options.outbox_interval)
            if not self.leadership.leading:  # another node drains it
                continue
            try:
                await asyncio.to_thread(notify_outbox.drain, self.store)
            except Exception:  # tried again at the next round; what was not deleted is still there
                log.exception("draining the notification outbox failed")

    async def _ticks(self) -> None:
        """List events fire within one tick of their dependencies being met."""
        while True:
            await asyncio.sleep(self.options.tick_interval)
            if not self.leadership.leading:  # another node runs it
                continue
            try:
                fired = await asyncio.to_thread(run_tick, self.store, self.snapshot, self.store.now())
            except Exception:  # a failed tick is tried again at the next one
                log.exception("event tick failed")
                continue
            for item in fired:  # announced by the tick's transaction (engine/events.py)
                note(log, "event.fired", list=item.list_name, event=item.event, subscribers=item.count, source="tick")
            if fired:
                self.scheduler.wake()

    async def inject(self, data: bytes, mail_from: str, recipients: list[str]) -> None:
        """Mail the engine writes itself (delivery reports, notices): local addresses take the
        inbound path (a report to a VERP address becomes a bounce record); others are queued."""
        snapshot = self.snapshot
        local, remote = [], []
        for address in recipients:
            found = accept_recipient(address, snapshot)
            (local if isinstance(found, Recipient) else remote).append(found if isinstance(found, Recipient) else address)
        membership = await asyncio.to_thread(look_up_in, self.store, data, mail_from, local, snapshot,
                                             self.store.now()) if local else None
        record = fan_out(data, mail_from, local, snapshot, self.store.now(), membership) if local else \
            InboundRecord(mail_from, (), data, snapshot.generation, ())
        if local and self.metrics is not None:
            self.metrics.verdicts(record)
        if isinstance(record, Refused):
            log.warning("engine mail to %s refused: %s", recipients, record.reply)
            return
        archive = snapshot.delivery.archive_copy
        if remote:
            extra = (archive,) if archive and archive not in remote else ()
            notice = PostRecord("", "queued", "notice", data, mail_from, tuple(remote) + extra)
            record = InboundRecord(mail_from, tuple(recipients), data, snapshot.generation, record.posts + (notice,))
        await self.spool.submit(record)

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.follower is not None:
            await self.follower.stop()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.handler is not None:  # SPF's threads, idle once no session is left
            self.handler.close()
        if self.web is not None:
            await self.web.close()
        run = next((t for t in self.tasks if t.get_name() == "delivery-scheduler"), None)
        if run is not None and self.scheduler is not None:  # sends in flight finish; outcomes written
            await self.scheduler.drain(run, self.options.stop_timeout)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.leadership is not None:  # another node leads at its next check, not after a timeout
            await asyncio.to_thread(self.leadership.close)
        if self.notifications is not None:  # before the spool: an email action queues through it
            await self.notifications.close()
        if self.spool is not None:
            await asyncio.to_thread(self.spool.close)
        if self.metrics is not None:
            notify_bus.detach(self.metrics)


def listener_tls(options: ServeOptions) -> ssl.SSLContext | None:
    """STARTTLS on the listener, from the certificate files; clients are not asked for certificates."""
    if options.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(options.tls_cert, options.tls_key)
    except ssl.SSLError:
        raise
    except OSError as exc:  # not readable: said as such, never as an address that cannot be listened on
        raise CertificateUnreadable(f"cannot read the TLS certificate {options.tls_cert}"
                                    f"{' or its key ' + options.tls_key if options.tls_key else ' (or its key)'}: "
                                    f"{exc.strerror or exc}") from None
    return context


class CertificateUnreadable(Exception):
    """The listener's certificate or key file cannot be read (permissions, I/O)."""


async def start_engine(store: Store, options: ServeOptions) -> Engine:
    engine = Engine(store, options, load_snapshot(store))
    await engine.start()
    return engine


async def serve_forever(store: Store, options: ServeOptions, ready=lambda engine: None) -> None:
    engine = await start_engine(store, options)
    ready(engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, engine.follower.request, "sighup")
    await stop.wait()
    note(log, "serve.stopping", text="stopping: no new sessions; finishing what is in flight")
    await engine.stop()
