"""Shared fixtures: a configuration folder, a real SQLite store, a running engine on loopback."""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from listkeeper.engine.server import ServeOptions, start_engine
from listkeeper.manifests import load_manifests
from listkeeper.reconcile import reconcile
from listkeeper.store import Store
from listkeeper.store.signing import verp_key

REPO = Path(__file__).resolve().parent.parent

DOMAIN = """
apiVersion: listkeeper/v1
kind: Domain
metadata: {name: example-org}
spec: {domain: example.org, hostname: lists.example.org, postmaster: postmaster@example.org}
"""


def pickup_routes(folder: Path) -> str:
    return f"""
apiVersion: listkeeper/v1
kind: RoutingTable
metadata: {{name: default}}
spec:
  routes:
    - match: "*"
      transport: pickup
      folder: {folder}
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_available() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    try:
        with create_engine(PG_ADMIN).connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means: skip, and say why
        return f"PostgreSQL at 127.0.0.1:5432 is not reachable: {type(exc).__name__}"
    return None


@contextmanager
def pg_database():
    """A throwaway database on the PostgreSQL server of this machine (skips when it is unreachable)."""
    reason = postgres_available()
    if reason:
        pytest.skip(f"PostgreSQL store tests skipped: {reason}")
    name = f"lk_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path):
    """A fresh store URL: a SQLite file, then a database of its own on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    with pg_database() as url:
        yield url


@pytest.fixture
def store(db_url: str):
    """A migrated store on SQLite and on PostgreSQL, its clock at 1000."""
    opened = Store.open(db_url, clock=lambda: 1000.0)
    yield opened
    opened.close()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'var' / 'listkeeper.db'}"


def reconcile_folder(folder: Path, url: str, prune: bool = False) -> Store:
    store = Store.open(url)
    reconcile(load_manifests([folder]), store, prune=prune)
    return store


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll until predicate() is truthy; bounded in time."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        await asyncio.sleep(interval)


@pytest.fixture
async def engine_for(tmp_path: Path, store_url: str):
    """engine_for(config_folder) reconciles the folder and starts an engine on a free loopback port."""
    started = []

    async def start(folder: Path, **options):
        store = reconcile_folder(folder, store_url)
        engine = await start_engine(store, ServeOptions(**{"port": 0, "http_port": 0, **options}))
        started.append(engine)
        return engine

    yield start
    for engine in started:
        try:
            async with asyncio.timeout(20):
                await engine.stop()
        except TimeoutError:  # say what hangs instead of hanging the whole run
            for task in asyncio.all_tasks():
                task.print_stack()
            raise
        engine.store.close()


def tagged_verp(store: Store, address: str, bounce_address: str = "members-bounces@example.org") -> str:
    """The VERP return path delivery gives a copy to `address`: with the tag made with the store's key."""
    from listkeeper.manifests.addresses import sign_verp
    with store.engine.begin() as conn:
        key = verp_key(conn)
    return sign_verp(key, bounce_address, address)
