"""The shared serial console (shoal.agent.consoleshare) against a stand-in QEMU console socket:
every viewer sees what the guest prints, any viewer's keys reach the guest, the connection closes
with the last viewer (also one that joined and left without being served), and a viewer that
does not read is dropped with a reason instead of holding the others back."""

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from shoal.agent.consoleshare import MAX_BACKLOG, ConsoleShares
from shoal.tunnel.protocol import close_code


class FakeSocket:
    """The agent's end of a tunnel stream: what the viewer sends, and what reaches it."""

    def __init__(self, *, reads: bool = True) -> None:
        self.incoming: asyncio.Queue[bytes | str | None] = asyncio.Queue()
        self.sent: list[bytes | str] = []
        self.closed: tuple[int, str] | None = None
        self.reads = reads
        self.blocked = asyncio.Event()

    async def send(self, data: bytes | str) -> None:
        if not self.reads:
            await self.blocked.wait()  # a viewer that never takes anything
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    def __aiter__(self) -> "FakeSocket":
        return self

    async def __anext__(self) -> bytes | str:
        item = await self.incoming.get()
        if item is None:
            raise StopAsyncIteration
        return item

    def text(self) -> bytes:
        return b"".join(item for item in self.sent if isinstance(item, bytes))


async def console_server(path: Path) -> tuple[asyncio.AbstractServer, list[Any]]:
    """A console that echoes what it gets as `guest: ...` and counts its connections."""
    connections: list[Any] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while data := await reader.read(4096):
            writer.write(b"guest: " + data)
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(serve, str(path)), connections


def test_viewers_share_one_console_connection(tmp_path: Path) -> None:
    async def scenario() -> None:
        server, connections = await console_server(tmp_path / "console.sock")
        shares = ConsoleShares()

        async def opener() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_unix_connection(str(tmp_path / "console.sock"))

        first, second = FakeSocket(), FakeSocket()
        viewers = [await shares.open("vm", opener), await shares.open("vm", opener)]
        serving = [
            asyncio.create_task(viewers[0].serve(first)),
            asyncio.create_task(viewers[1].serve(second)),
        ]
        await first.incoming.put(b"echo hi\n")
        for sock in (first, second):
            for _ in range(100):
                if b"guest: echo hi" in sock.text():
                    break
                await asyncio.sleep(0.01)
            assert b"guest: echo hi" in sock.text()
        assert len(connections) == 1, "one connection to the console, however many viewers"

        # One that joined and left without being served keeps nothing open.
        joined = await shares.open("vm", opener)
        joined.leave()
        joined.leave()

        for sock in (first, second):
            await sock.incoming.put(None)
        await asyncio.gather(*serving)
        assert shares._shares == {}
        for _ in range(100):
            if connections[0].is_closing():
                break
            await asyncio.sleep(0.01)
        assert connections[0].is_closing(), "the console connection closes with the last viewer"
        server.close()

    asyncio.run(scenario())


def test_a_viewer_that_does_not_read_is_dropped_and_the_others_go_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "console.sock"
        chatty_writers: list[asyncio.StreamWriter] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            chatty_writers.append(writer)
            with contextlib.suppress(ConnectionError):
                await reader.read()

        server = await asyncio.start_unix_server(serve, str(path))
        shares = ConsoleShares()

        async def opener() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_unix_connection(str(path))

        stuck, reading = FakeSocket(reads=False), FakeSocket()
        tasks = [
            asyncio.create_task((await shares.open("vm", opener)).serve(stuck)),
            asyncio.create_task((await shares.open("vm", opener)).serve(reading)),
        ]
        while not chatty_writers:
            await asyncio.sleep(0.01)
        block = b"x" * 65536
        for _ in range(2 * MAX_BACKLOG // len(block) + 2):
            chatty_writers[0].write(block)
            await chatty_writers[0].drain()
            await asyncio.sleep(0)
        for _ in range(300):
            if stuck.closed is not None:
                break
            await asyncio.sleep(0.01)
        assert stuck.closed is not None and stuck.closed[0] == close_code(429)
        assert "too slow" in stuck.closed[1]
        for _ in range(300):
            if len(reading.text()) >= 2 * MAX_BACKLOG:
                break
            await asyncio.sleep(0.01)
        assert len(reading.text()) >= 2 * MAX_BACKLOG, "the reading viewer got everything"
        await reading.incoming.put(None)
        stuck.blocked.set()
        await asyncio.gather(*tasks)
        server.close()

    asyncio.run(scenario())
