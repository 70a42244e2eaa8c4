"""The raw TCP path into and out of a VM that ``hearth bench run`` measures Hearth against.

``GUEST_STREAM_SERVER`` is a few lines of Python the bench starts in the guest (through the exec
route); ``GuestStreamClient`` is the host's side, reaching it through a loopback forward. Nothing
sits on top of TCP: a request line, then the bytes.
"""

from __future__ import annotations

import asyncio

from hearth.bench.errors import BenchError
from hearth.vm.readiness import Deadline

GUEST_PORT = 7070  # in the guest; the agent's is 8080
_CHUNK = 256 * 1024
# Run in the guest as ``python3 -c GUEST_STREAM_SERVER PORT`` (its cwd: the workspace). One
# request per connection, a line naming it: ``ping`` → ``pong``; ``send PATH`` → the file's bytes,
# then the end of the stream; ``recv PATH N`` + N bytes → written to PATH, synced, ``ok N``.
GUEST_STREAM_SERVER = """
import os, socket, sys
CHUNK = 256 * 1024
server = socket.create_server(("0.0.0.0", int(sys.argv[1])), backlog=8)
while True:
    conn, _ = server.accept()
    try:
        with conn, conn.makefile("rb") as incoming:
            verb, *args = incoming.readline().decode().split()
            if verb == "ping":
                conn.sendall(b"pong\\n")
            elif verb == "send":
                with open(args[0], "rb") as source:
                    while chunk := source.read(CHUNK):
                        conn.sendall(chunk)
            elif verb == "recv":
                left = int(args[1])
                os.makedirs(os.path.dirname(args[0]) or ".", exist_ok=True)
                with open(args[0], "wb") as sink:
                    while left > 0 and (chunk := incoming.read1(min(left, CHUNK))):
                        sink.write(chunk)
                        left -= len(chunk)
                    sink.flush()
                    os.fsync(sink.fileno())
                conn.sendall(b"ok %d\\n" % (int(args[1]) - left))
    except Exception as exc:
        print(f"request failed: {exc!r}", file=sys.stderr, flush=True)
"""


def guest_stream_command(port: int = GUEST_PORT) -> list[str]:
    """The argv that runs the raw TCP server on ``port``."""
    return ["python3", "-c", GUEST_STREAM_SERVER, str(port)]


class GuestStreamClient:
    """The host's side of the raw TCP path: one connection per request, nothing on top."""

    def __init__(self, host: str, port: int, *, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s

    async def wait_ready(self, deadline: Deadline) -> None:
        """Ping until the server answers (a forward accepts before anything listens behind it)."""
        last = "no answer"
        while not deadline.expired:
            try:
                async with asyncio.timeout(min(5.0, deadline.remaining() + 0.1)):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                    try:
                        writer.write(b"ping\n")
                        await writer.drain()
                        if await reader.readline() == b"pong\n":
                            return
                        last = "no pong"
                    finally:
                        writer.close()
            except (OSError, TimeoutError) as exc:
                last = type(exc).__name__
            await asyncio.sleep(0.2)
        raise BenchError(f"the raw TCP server at {self.host}:{self.port} never answered ({last})")

    async def send(self, path: str) -> int:
        """Have the server send the file at ``path``; the bytes that arrived."""
        moved = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(f"send {path}\n".encode())
                    await writer.drain()
                    while chunk := await reader.read(_CHUNK):
                        moved += len(chunk)
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            raise BenchError(f"raw TCP out of the VM broke off: {type(exc).__name__}") from exc
        return moved

    async def receive(self, path: str, data: bytes) -> int:
        """Send ``data`` for the server to write to ``path``; the bytes it says it wrote."""
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(f"recv {path} {len(data)}\n".encode())
                    view = memoryview(data)
                    for start in range(0, len(view), _CHUNK):
                        writer.write(view[start : start + _CHUNK])
                        await writer.drain()
                    writer.write_eof()
                    answer = (await reader.readline()).decode().split()
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            raise BenchError(f"raw TCP into the VM broke off: {type(exc).__name__}") from exc
        if len(answer) != 2 or answer[0] != "ok" or not answer[1].isdigit():
            raise BenchError(f"raw TCP into the VM: the server answered {answer!r}")
        return int(answer[1])
