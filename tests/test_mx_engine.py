"""Direct MX delivery through the engine, with a real name server and an SMTP sink on loopback."""

from __future__ import annotations

import sqlite3

from .conftest import DOMAIN, wait_for, write
from .dnsserver import ZoneServer
from .smtpsink import free_port, start_sink
from .test_scheduler import post


async def test_posts_reach_each_domains_mx_and_null_mx_fails_at_once(tmp_path, engine_for, store_url):
    port = free_port()
    sink, controller = start_sink(host="127.0.0.2", port=port)
    zone = ZoneServer({
        "example.test": [("MX", 20, "mx2.example.test"), ("MX", 10, "mx1.example.test")],
        "mx1.example.test": [("A", "127.0.0.2")],
        "mx2.example.test": [("A", "127.0.0.3")],
        "implicit.test": [("A", "127.0.0.2")],
        "nullmx.test": [("MX", 0, ".")],
    })
    zone.start()
    try:
        conf = tmp_path / "conf"
        write(conf, "domain.yaml", DOMAIN)
        write(conf, "list.yaml", """
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: members}
spec:
  address: members@example.org
  type: discussion
  subscribers:
    - address: poster@example.org
      roles: [poster]
    - address: ann@example.test
    - address: ben@implicit.test
    - address: nobody@nullmx.test
""")
        write(conf, "routes.yaml", f"""
apiVersion: listkeeper/v1
kind: RoutingTable
metadata: {{name: default}}
spec:
  routes:
    - match: "*"
      transport: mx
  delivery: {{mx_port: {port}}}
  dns:
    nameservers: [{{address: 127.0.0.1, port: {zone.port}}}]
    timeout: 2s
""")
        engine = await engine_for(conf)
        await post(engine)
        await wait_for(lambda: len(sink.received) == 2)
        assert sink.rcpts() == ["ann@example.test", "ben@implicit.test"]
        db = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        rows = await wait_for(lambda: db.execute(
            "select state, last_error from deliveries where recipient='nobody@nullmx.test' and state='failed'"
        ).fetchall())
        assert "556 5.1.10" in rows[0][1] and "null MX" in rows[0][1]
        db.close()
    finally:
        zone.stop()
        controller.stop()
