"""A TCP proxy on 127.0.0.1 that a test can cut, reopen and slow down.

Put in front of the ClickHouse endpoint, it makes "ClickHouse unreachable
for N s" real: `close()` stops listening and resets every open connection
(the worker sees connection refused/reset, as with a dead server), `open()`
listens again on the same port. `delay_s` holds each client->server chunk
back, which turns the store into a slow one (backpressure).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, delay_s: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(30)

    def open(self) -> None:
        self._call(self._open())

    def close(self) -> None:
        self._call(self._close())

    async def _open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            sock = w.get_extra_info("socket")
            with contextlib.suppress(OSError):
                # RST rather than FIN: an abrupt loss, as when a server dies.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            w.transport.abort()
        self._writers.clear()

    async def _shutdown(self) -> None:
        """Cut everything and let the loop close every socket before it stops.

        A connection left to the garbage collector is a ResourceWarning in
        the test process, an error under `filterwarnings = error`.
        """
        await self._close()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(3):  # abort() closes the socket in a callback of the next rounds
            await asyncio.sleep(0)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(client_w)  # a close() while we connect must cut it too
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            self._writers.discard(client_w)
            client_w.transport.abort()
            return
        if client_w not in self._writers:  # cut by close() while connecting
            server_w.transport.abort()
            client_w.transport.abort()
            return
        self._writers.add(server_w)
        try:
            await asyncio.gather(
                self._pipe(client_r, server_w, self.delay_s), self._pipe(server_r, client_w, 0.0)
            )
        finally:
            self._writers.discard(client_w)
            self._writers.discard(server_w)


def through(proxy: TcpProxy, url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{proxy.port}"))


def clickhouse_proxy(url: str, *, delay_s: float = 0.0) -> TcpProxy:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return TcpProxy(parts.hostname, parts.port, delay_s=delay_s)
