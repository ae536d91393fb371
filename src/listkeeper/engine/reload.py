"""Hot reload: the files are the trigger, the store's generation is the truth.

A change in the configuration folders (watched with watchfiles) or SIGHUP loads and validates every
manifest. When anything is invalid, the reload is refused with every error and the engine keeps the
configuration it runs; when all is valid, the manifests are reconciled into the store exactly as
`listkeeper reconcile` does. Every engine on the store follows the store's generation, whoever moved
it (this node, another node, a reconcile run from CI), and swaps its snapshot whole: SMTP sessions
and deliveries in flight finish on the snapshot they started with."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from watchfiles import Change, DefaultFilter, awatch

from listkeeper.logs import note
from listkeeper.manifests import ManifestErrors, load_manifests
from listkeeper.manifests.validation import FileCache
from listkeeper.reconcile import ApplyError, Review, reconcile
from listkeeper.store import Store
from listkeeper.store import config as applied_config
from listkeeper.store import config_history, nodes
from listkeeper.store.config import LockTimeout
from listkeeper.store.config_history import ConfigChange, Origin

from .snapshot import Snapshot, load_snapshot

log = logging.getLogger("listkeeper.reload")


@dataclass(frozen=True)
class ReloadOptions:
    paths: tuple[str, ...] = ()  # configuration folders (or files); none: only follow the store
    watch: bool = True  # False: only SIGHUP (and the store's generation) reload
    prune: bool = False  # a reload may delete resources (serve --prune)
    quiet: float = 0.2  # seconds without a further change before a burst of changes is reloaded...
    longest: float = 1.6  # ...but no longer than this after its first change
    poll_interval: float = 1.0  # seconds between reads of the store's generation
    heartbeat: float = 15.0  # seconds between the node's "still here" in the store
    lock_timeout: float = 30.0  # seconds a reload waits for another reconcile to finish


@dataclass(frozen=True)
class Rejection:
    """A reload refused because the manifests are invalid; the engine kept `generation`.
    The payload of the `config.rejected` event."""

    at: float
    node: str
    trigger: str
    generation: int
    errors: tuple[str, ...]  # "path:line:column: field: message"


def node_name(given: str | None, port: int) -> str:
    return given or f"{socket.gethostname()}:{port}"


class WatchFilter(DefaultFilter):
    """Changes in the watched folders (less editors' swap and backup files), and to the files named."""

    def __init__(self, folders: list[Path], files: list[Path]):
        super().__init__()
        self._folders = [str(f) for f in folders]
        self._files = {str(f) for f in files}

    def __call__(self, change: Change, path: str) -> bool:
        inside = path in self._files or any(path == f or path.startswith(f + "/") for f in self._folders)
        return inside and super().__call__(change, path)


class ConfigFollower:
    """Keeps one engine on the newest valid configuration. One worker does every reload in turn, so a
    burst of triggers (a save, SIGHUP, a new generation seen in the store) never overlaps itself."""

    def __init__(self, store: Store, node: str, options: ReloadOptions, current: Callable[[], Snapshot],
                 install: Callable[[Snapshot], None], rejected: Callable[[Rejection], None], listening: str = "",
                 metrics=None):
        self.store = store
        self._metrics = metrics  # counts reloads by result (engine/metrics.py), or None
        self.node = node
        self.options = options
        self._current = current
        self._install = install
        self._rejected = rejected
        self._listening = listening
        self._cache = FileCache()  # unchanged files are not parsed and validated again
        self._triggers: list[str] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._unloadable: int | None = None  # a generation this engine failed to load: not retried by polling
        self._tasks: list[asyncio.Task] = []
        self.reloads = 0  # finished reload rounds (tests wait on it)
        # a thread of its own: under load the default executor's threads are busy with the SMTP
        # sessions' store lookups, and a reload must not queue behind them
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="config-reload")

    async def _in_thread(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def start(self) -> None:
        await self._in_thread(self._write, nodes.started, self._current().generation, self.store.now(),
                              self._listening)
        self._tasks.append(asyncio.create_task(self._work(), name="config-reload"))
        self._tasks.append(asyncio.create_task(self._follow_store(), name="config-generation"))
        if self.store.engine.dialect.name == "postgresql":
            self._tasks.append(asyncio.create_task(self._listen_store(), name="config-notices"))
        if self.options.paths and self.options.watch:
            self._tasks.append(asyncio.create_task(self._watch(), name="config-watch"))
            # a first round right away: it fills the file cache (the first change then costs what a change
            # costs), and it applies what changed between serve's start-up reconcile and the watcher's start
            self.request("start")

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._in_thread(self._write, nodes.stopped, self.store.now())
        except Exception:  # noqa: BLE001 - the store may be gone already; stopping goes on
            log.warning("could not record that node %s stopped", self.node)
        self._thread.shutdown(wait=True)  # a reload still running finishes (or rolls back) first

    def request(self, trigger: str) -> None:
        """Reload the files (and then the store's generation) as soon as the worker is free."""
        self._triggers.append(trigger)
        self._wake.set()

    # -- the worker ---------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            triggers, self._triggers = self._triggers, []
            try:
                if triggers and self.options.paths:
                    outcome = await self._in_thread(self.reload_files, "+".join(dict.fromkeys(triggers)))
                    if isinstance(outcome, Rejection):
                        self._tell(outcome)
                await self._follow()
            except Exception:  # noqa: BLE001 - a failed round is logged; the engine keeps serving
                self._count("failed")
                note(log, "reload.failed", level=logging.ERROR, generation=self._current().generation,
                     exc_info=True, text="the engine keeps its configuration")
            self.reloads += 1

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.reload(result)

    def _tell(self, rejection: Rejection) -> None:
        try:
            self._rejected(rejection)
        except Exception:  # noqa: BLE001 - a listener's failure is not the reload's
            log.exception("config.rejected listener failed")

    def reload_files(self, trigger: str) -> Rejection | int | None:
        """Validate, then reconcile: a Rejection, the new generation, or None when nothing changed."""
        paths = self.options.paths
        began = time.perf_counter()
        try:
            manifests = load_manifests(paths, self._cache)
        except ManifestErrors as exc:
            return self._reject(trigger, [str(e) for e in exc.errors])
        for path in manifests.skipped:
            log.info("config: %s skipped: no document has apiVersion or kind", path)
        validated = time.perf_counter()
        shown: list[Review] = []
        try:
            generation = reconcile(manifests, self.store, self.options.prune, self.options.lock_timeout,
                                   show=shown.append, origin=Origin(self.node, trigger, paths), assess=False)
        except ApplyError as exc:
            return self._reject(trigger, [str(exc)])
        except LockTimeout as exc:
            self._count("failed")
            note(log, "reload.failed", level=logging.ERROR, trigger=trigger, generation=self._current().generation,
                 error=str(exc), text="not applied; the engine keeps its generation; save again or send SIGHUP")
            return None
        held = shown[0].plan.held_back if shown else 0
        if held:
            log.warning("config: %d deletion(s) held back: serve runs without --prune (or the resource is "
                        "annotated against pruning)", held)
        took = dict(validate_seconds=round(validated - began, 3),
                    reconcile_seconds=round(time.perf_counter() - validated, 3))
        if generation is None:
            self._count("unchanged")
            note(log, "reload.unchanged", trigger=trigger, **took)
        else:
            self._count("applied")
            note(log, "reload.applied", generation=generation, trigger=trigger, changes=_summary(shown[0]), **took)
        return generation

    def _reject(self, trigger: str, errors: list[str]) -> Rejection:
        kept = self._current().generation
        self._count("rejected")
        note(log, "reload.rejected", level=logging.ERROR, generation=kept, trigger=trigger, count=len(errors),
             errors=errors, text="the engine keeps its generation")
        rejection = Rejection(self.store.now(), self.node, trigger, kept, tuple(errors))
        change = ConfigChange(rejection.at, "rejected", kept, Origin(self.node, trigger, self.options.paths),
                              errors=rejection.errors)
        with self.store.engine.begin() as conn:
            config_history.record(conn, change)
        return rejection

    async def _follow(self) -> None:
        """Swap to the store's generation if it moved on: only changed resources are parsed again."""
        current = self._current()
        fresh = await self._in_thread(self._load_newer, current)
        if fresh is None:
            return
        self._install(fresh)
        note(log, "reload.loaded", generation=fresh.generation, previous=current.generation, lists=len(fresh.lists))
        await self._in_thread(self._write, nodes.loaded, fresh.generation, self.store.now())

    def _load_newer(self, current: Snapshot) -> Snapshot | None:
        if self._generation() == current.generation:
            return None
        try:
            fresh = load_snapshot(self.store, current)
        except Exception:
            self._unloadable = self._generation()
            log.exception("cannot load configuration generation %d; the engine keeps generation %d",
                          self._unloadable, current.generation)
            return None
        return fresh if fresh.generation != current.generation else None

    # -- the triggers -------------------------------------------------------------------------------------

    async def _follow_store(self) -> None:
        """Poll the store's generation (one indexed read a second): other nodes' and CI's reconciles."""
        beat = 0.0
        while True:
            await asyncio.sleep(self.options.poll_interval)
            try:
                generation = await self._in_thread(self._generation)
                if generation not in (self._current().generation, self._unloadable):
                    self._wake.set()
                beat += self.options.poll_interval
                if beat >= self.options.heartbeat:
                    beat = 0.0
                    await self._in_thread(self._write, nodes.seen, self.store.now())
            except Exception:  # noqa: BLE001 - a store hiccup; the next poll tries again
                log.warning("cannot read the configuration generation from the store", exc_info=True)

    async def _listen_store(self) -> None:
        """PostgreSQL: a generation committed anywhere is announced (LISTEN/NOTIFY) and loaded at once;
        polling stays as the fallback for notices missed while the listening connection was down."""
        said = False

        def listening() -> None:  # each loss is said, and so is each return
            nonlocal said
            if said:
                log.info("listening for configuration notices again")
                said = False

        while True:
            try:
                async for generation in applied_config.generation_notices(self.store.engine, listening):
                    if generation not in (self._current().generation, self._unloadable):
                        self._wake.set()
            except Exception as exc:  # noqa: BLE001 - the store went away: polling carries on meanwhile
                if not said:
                    log.warning("listening for configuration notices failed (%s); polling every %g s and "
                                "listening again shortly", exc, self.options.poll_interval)
                    said = True
            await asyncio.sleep(5.0)

    async def _watch(self) -> None:
        folders = [Path(p).resolve() for p in self.options.paths if Path(p).is_dir()]
        files = [Path(p).resolve() for p in self.options.paths if not Path(p).is_dir()]
        targets = sorted({str(f) for f in folders} | {str(f.parent) for f in files})
        watch_filter = WatchFilter(folders, files)
        said = ""
        while not self._stop.is_set():
            try:
                async for changes in awatch(*targets, watch_filter=watch_filter, stop_event=self._stop,
                                            step=int(self.options.quiet * 1000),
                                            debounce=int(self.options.longest * 1000)):
                    log.info("config.changed %s", ", ".join(sorted(path for _, path in changes)[:10])
                             + (f" and {len(changes) - 10} more" if len(changes) > 10 else ""))
                    self.request("watch")
            except Exception as exc:  # noqa: BLE001 - e.g. a watched folder removed: watch again shortly
                problem = f"watching {', '.join(targets)} failed ({exc}); trying again every second"
                if problem != said:  # once, not every second
                    log.warning("%s", problem)
                    said = problem
                await asyncio.sleep(1.0)

    # -- the store ----------------------------------------------------------------------------------------

    def _generation(self) -> int:
        with self.store.engine.connect() as conn:
            return applied_config.generation(conn)

    def _write(self, what: Callable, *args) -> None:
        """One of store/nodes.py's writes about this node."""
        with self.store.engine.begin() as conn:
            what(conn, self.node, *args)


def _summary(review: Review) -> str:
    return ", ".join(f"{c.action.value} {c.kind}/{c.name}" for c in review.plan.changes if c.changes_something)
