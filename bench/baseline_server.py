"""The baseline: a bare aiosmtpd server whose handler writes each message to a file and fsyncs it."""

import asyncio
import os
import sys
from pathlib import Path

from aiosmtpd.smtp import SMTP


class FsyncHandler:
    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0

    def _write(self, name: str, data: bytes) -> None:
        with open(self.folder / name, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        await asyncio.to_thread(self._write, f"{self.count:08d}.eml", envelope.original_content)
        return "250 OK"


async def main(port: int, folder: Path) -> None:
    handler = FsyncHandler(folder)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="baseline.test"), "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2])))
