"""plan: validate + plan a generated tree of many lists and routes, against a bare ruamel.yaml parse.

Phases, each in a fresh process so its wall time and peak memory are its own:
  parse      baseline: only parse every YAML file with ruamel.yaml (its libyaml-based safe loader)
  nochange   load + validate the manifests and plan against a store already holding them
  changed    the same after a change to some of the lists
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PER_FILE = 100


def generate(root: Path, lists: int, routes: int, changed: int = 0) -> None:
    """lists.d: a Domain and `lists` lists (PER_FILE per file); routes.d: relays and one table."""
    shutil.rmtree(root / "lists.d", ignore_errors=True)
    (root / "lists.d").mkdir(parents=True)
    (root / "routes.d").mkdir(exist_ok=True)
    (root / "lists.d" / "domain.yaml").write_text(
        "apiVersion: listkeeper/v1\nkind: Domain\nmetadata: {name: example-org}\n"
        "spec: {domain: example.org, hostname: lists.example.org, postmaster: postmaster@example.org}\n")
    for start in range(0, lists, PER_FILE):
        docs = []
        for i in range(start, min(start + PER_FILE, lists)):
            prefix = f"[l{i}]" if i >= changed else f"[changed {i}]"
            docs.append(f"""apiVersion: listkeeper/v1
kind: MailingList
metadata:
  name: list-{i}
spec:
  address: list-{i}@example.org
  type: discussion
  subject_prefix: "{prefix}"
  description: Generated list number {i}
  subscribers:
    - address: owner{i}@example.org
      roles: [moderator, regular]
    - address: a{i}@example.net
    - address: b{i}@example.com
    - address: c{i}@example.com
      roles: [digest]
""")
        (root / "lists.d" / f"lists-{start // PER_FILE:04d}.yaml").write_text("---\n".join(docs))
    relays = 10
    docs = [f"apiVersion: listkeeper/v1\nkind: Relay\nmetadata: {{name: relay-{r}}}\n"
            f"spec: {{host: smtp{r}.example.net, port: 587, tls: starttls}}\n" for r in range(relays)]
    rows = "".join(f"    - match: \"*.d{i}.example\"\n      transport: relay\n      relay: relay-{i % relays}\n"
                   for i in range(routes - 1))
    docs.append("apiVersion: listkeeper/v1\nkind: RoutingTable\nmetadata: {name: default}\nspec:\n  routes:\n"
                + rows + "    - match: \"*\"\n      transport: mx\n")
    (root / "routes.d" / "routes.yaml").write_text("---\n".join(docs))


def phase(name: str, root: Path, store: str) -> dict:
    """Run in this process: one phase, timed."""
    paths = [root / "lists.d", root / "routes.d"]
    start = time.perf_counter()
    if name == "parse":
        from ruamel.yaml import YAML
        docs = 0
        for folder in paths:
            for path in sorted(folder.rglob("*.yaml")):
                docs += sum(1 for _ in YAML(typ="safe", pure=False).load_all(path.read_text()))
        detail = {"documents": docs}
    else:
        from listkeeper.manifests import load_manifests
        from listkeeper.reconcile import review
        from listkeeper.store import Store
        manifests = load_manifests(paths)
        s = Store.open(store)
        found = review(manifests, s)
        s.close()
        from listkeeper.reconcile import Action
        detail = {"resources": len(manifests.resources), "updates": found.plan.count(Action.update)}
    elapsed = time.perf_counter() - start
    return {"phase": name, "seconds": elapsed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **detail}


def run_phase(name: str, root: Path, store: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--root", str(root), "--store", store],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    if out.returncode != 0:
        sys.exit(f"phase {name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench plan", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's size: 10,000 lists, 1,000 routes")
    parser.add_argument("--lists", type=int, default=3000)
    parser.add_argument("--routes", type=int, default=300)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, Path(args.root), args.store)))
        return
    if args.full:
        args.lists, args.routes = 10_000, 1_000
    changed = args.lists // 10
    with tempfile.TemporaryDirectory(prefix="lk-bench-plan-") as tmp:
        root = Path(tmp)
        store = f"sqlite:///{root}/store.db"
        generate(root, args.lists, args.routes)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "LISTKEEPER_STORE": store}
        subprocess.run([sys.executable, "-m", "listkeeper", "reconcile", str(root / "lists.d"), str(root / "routes.d")],
                       check=True, capture_output=True, env=env)
        parse = run_phase("parse", root, store)
        nochange = run_phase("nochange", root, store)
        generate(root, args.lists, args.routes, changed=changed)
        changed_run = run_phase("changed", root, store)
    print(f"{args.lists} lists, {args.routes} routes; {changed} lists changed in the last phase")
    print(f"{'phase':<44}{'seconds':>9}{'peak MB':>9}{'× parse':>9}")
    for label, r in (("ruamel.yaml parse only (baseline)", parse), ("validate + no-change plan", nochange),
                     (f"validate + plan, {changed} lists changed", changed_run)):
        print(f"{label:<44}{r['seconds']:>9.2f}{r['peak_rss_mb']:>9.0f}{r['seconds'] / parse['seconds']:>9.2f}")
    if changed_run.get("updates") != changed:
        sys.exit(f"expected {changed} updates, the plan has {changed_run.get('updates')}")
    print(json.dumps({"bench": "plan", "lists": args.lists, "routes": args.routes,
                      "parse_s": round(parse["seconds"], 2), "nochange_plan_s": round(nochange["seconds"], 2),
                      "changed_plan_s": round(changed_run["seconds"], 2),
                      "ratio": round(nochange["seconds"] / parse["seconds"], 2),
                      "changed_ratio": round(changed_run["seconds"] / parse["seconds"], 2),
                      "peak_rss_mb": round(max(nochange["peak_rss_mb"], changed_run["peak_rss_mb"]), 1)}))


if __name__ == "__main__":
    main()
