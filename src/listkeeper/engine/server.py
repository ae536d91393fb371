"""`listkeeper serve`: reconcile, load the snapshot, then run SMTP, the spool and the queue runner."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.smtp import SMTP

from listkeeper.delivery.runner import DeliveryRunner
from listkeeper.store import Store

from .smtp import ListHandler
from .snapshot import Snapshot, load_snapshot
from .spool import Spool

log = logging.getLogger("listkeeper.serve")


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 2525
    concurrency: int = 20
    mx_port: int = 25
    data_size_limit: int = 64 * 1024 * 1024


@dataclass
class Engine:
    """The running engine: everything it serves from comes from `snapshot`, swapped whole."""

    store: Store
    options: ServeOptions
    snapshot: Snapshot
    spool: Spool | None = None
    runner: DeliveryRunner | None = None
    server: asyncio.base_events.Server | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)

    def current(self) -> Snapshot:
        return self.snapshot

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.runner = DeliveryRunner(self.store, self.current, concurrency=self.options.concurrency,
                                     mx_port=self.options.mx_port)
        self.spool = Spool(self.store, on_commit=self.runner.wake)
        handler = ListHandler(self.current, self.spool, self.store.now)
        hostname = self.snapshot.hostname()  # given, so aiosmtpd never calls getfqdn per connection

        def protocol() -> SMTP:
            return SMTP(handler, hostname=hostname, ident="listkeeper", decode_data=False,
                        enable_SMTPUTF8=True, data_size_limit=self.options.data_size_limit)

        self.server = await loop.create_server(protocol, host=self.options.host, port=self.options.port)
        self.tasks.append(asyncio.create_task(self.runner.run(), name="delivery-runner"))

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.spool is not None:
            await asyncio.to_thread(self.spool.close)


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
    await stop.wait()
    log.info("stopping")
    await engine.stop()
