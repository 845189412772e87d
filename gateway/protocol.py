"""HTTP/1.1 in C (httptools), answering requests it cannot parse the way the gateway answers every error,
and sending each answer in one write."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MALFORMED_HTTP_MESSAGE = (
    "the request is not valid HTTP/1.1 and was not read: check its request line,"
    " and that header names and values hold only visible ASCII"
)


class CorkedTransport(asyncio.Transport):
    """A transport that holds what is written until the answer is complete or the event loop turns.

    uvicorn writes an answer's status line and headers as soon as the
    application starts it, then the body: two sends, each a system call of a
    few microseconds, and two packets for the peer to read. Held and joined, an
    answer leaves in one. A streamed answer's
    parts still leave as they come: what was held goes out once the loop
    turns, before anything waits on a socket.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        # Copied when mutable: the caller may reuse its buffer once write returns.
        self._held.append(data if isinstance(data, bytes) else bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Sends what is held, in one write."""
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        if self._transport.is_closing():
            return  # the connection is gone, or going: as with a write of its own, the bytes go nowhere
        self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(data) for data in self._held)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with its plain-text 400 replaced by the v1 JSON error body,
    writing each answer through a `CorkedTransport`.

    A request the parser refuses never reaches the application, so this is the
    only place that can keep the promise that every error is JSON.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._corked = CorkedTransport(transport, self.loop)
        super().connection_made(self._corked)

    def on_response_complete(self) -> None:
        # The answer is whole: it leaves now, not a turn of the loop later.
        self._corked.flush()
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        body = orjson.dumps({"status": 400, "code": "MALFORMED_REQUEST", "message": MALFORMED_HTTP_MESSAGE})
        head = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(head))
        self.transport.close()
