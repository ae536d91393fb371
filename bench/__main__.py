import importlib
import sys

BENCHES = ("accept", "deliver", "events", "import", "members", "multinode", "plan", "reload")

if len(sys.argv) < 2 or sys.argv[1] not in BENCHES:
    sys.exit(f"usage: python -m bench {{{'|'.join(BENCHES)}}} [options]")
name = sys.argv.pop(1)
importlib.import_module(f"bench.{name}").main()
