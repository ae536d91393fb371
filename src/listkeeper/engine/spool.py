"""Group commit: accepted messages are written in batches, each SMTP reply waits for its batch."""

from __future__ import annotations

import asyncio
import logging
import queue as thread_queue
import threading
from collections.abc import Callable

from listkeeper import notify
from listkeeper.logs import note, session_id
from listkeeper.store import Store
from listkeeper.store import queue as store_queue
from listkeeper.store.queue import InboundRecord

log = logging.getLogger("listkeeper.spool")
MAX_BATCH = 256
_STOP = object()


class Spool:
    """One writer thread; a reply of 250 is sent only after its message's transaction committed."""

    def __init__(self, store: Store, on_commit: Callable[[], None] = lambda: None):
        self._store = store
        self._on_commit = on_commit
        self._queue: thread_queue.Queue = thread_queue.Queue()
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._thread.start()

    async def submit(self, record: InboundRecord) -> int:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((record, future, loop, session_id.get()))
        return await future

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except thread_queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                batch.append(more)
            self._write(batch)
            if stop:
                return

    def _write(self, batch) -> None:
        try:
            with self._store.engine.begin() as conn:
                stored = store_queue.spool_posts(conn, [record for record, _, _, _ in batch], self._store.now())
        except Exception as exc:  # the clients get 451 and retry; nothing was acknowledged
            log.exception("spool write failed for %d message(s)", len(batch))
            for _, future, loop, _ in batch:
                loop.call_soon_threadsafe(_settle, future, None, exc)
            return
        for (_, future, loop, _), (message_id, _) in zip(batch, stored):
            loop.call_soon_threadsafe(_settle, future, message_id, None)
        self._on_commit()
        for (record, _, _, session), (message_id, posts) in zip(batch, stored):
            _announce_holds(record, message_id)
            _log_posts(message_id, posts, session)


def _log_posts(queue_id: int, posts, session: str | None) -> None:
    """`post.queued`: which stored message (message_id, what deliveries name) each accepted copy is."""
    for post_id, post in posts:
        note(log, "post.queued", queue_id=queue_id, message_id=post_id, list=post.list_name or None,
             state=post.state, reason=post.reason, session=session)


def _announce_holds(record: InboundRecord, message_id: int) -> None:
    for post in record.posts:
        if post.hold is not None:
            notify.emit("moderation.held", list=post.list_name, sender=post.hold.sender, subject=post.hold.subject,
                        reason=post.reason, message_id=message_id)


def _settle(future: asyncio.Future, result, exc) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
