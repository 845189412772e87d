"""The gateway's HTTP protocol sends each answer in one write, and holds nothing back longer than a loop turn."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from starlette.responses import Response, StreamingResponse
from uvicorn.server import ServerState

from gateway.protocol import CorkedTransport, GatewayHttpProtocol


class RecordingTransport(asyncio.Transport):
    """What reaches the socket, write by write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def _turns(count: int = 3) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def _connected(app: Any) -> tuple[GatewayHttpProtocol, RecordingTransport]:
    config = uvicorn.Config(app, http=GatewayHttpProtocol, lifespan="off", log_level="warning")
    protocol = GatewayHttpProtocol(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_an_answer_leaves_in_one_write_status_line_headers_and_body_together() -> None:
    protocol, transport = _connected(Response(b'{"ok":true}', media_type="application/json"))
    for _ in range(2):  # and again on the same kept-alive connection
        transport.writes.clear()
        protocol.data_received(b"GET /x HTTP/1.1\r\nHost: dcp\r\n\r\n")
        await _turns()
        assert len(transport.writes) == 1
        answer = transport.writes[0]
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.endswith(b'\r\n\r\n{"ok":true}')
    assert not transport.closed


async def test_a_streamed_answer_sends_each_part_as_it_comes() -> None:
    release = asyncio.Event()

    async def parts() -> Any:
        yield b"first"
        await release.wait()
        yield b"second"

    protocol, transport = _connected(StreamingResponse(parts(), media_type="text/plain"))
    protocol.data_received(b"GET /x HTTP/1.1\r\nHost: dcp\r\n\r\n")
    await _turns(5)
    # The first part is out while the second is still to come.
    sent = b"".join(transport.writes)
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"first" in sent
    assert b"second" not in sent
    release.set()
    await _turns(5)
    assert b"".join(transport.writes).endswith(b"6\r\nsecond\r\n0\r\n\r\n")


async def test_a_malformed_request_is_answered_before_the_connection_closes() -> None:
    protocol, transport = _connected(Response(b""))
    protocol.data_received(b"NOT HTTP\r\n\r\n")
    assert transport.closed
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b'"code":"MALFORMED_REQUEST"' in transport.writes[0]


async def test_held_bytes_leave_once_the_loop_turns_and_copies_are_taken_of_mutable_buffers() -> None:
    inner = RecordingTransport()
    corked = CorkedTransport(inner, asyncio.get_running_loop())
    buffer = bytearray(b"abc")
    corked.write(buffer)
    corked.write(memoryview(b"def"))
    corked.write(b"")
    buffer[:] = b"xyz"
    assert inner.writes == []
    assert corked.get_write_buffer_size() == 6
    await asyncio.sleep(0)
    assert inner.writes == [b"abcdef"]
    assert corked.get_write_buffer_size() == 0


@pytest.mark.parametrize("ending", ["close", "write_eof"])
async def test_closing_sends_what_is_held_first(ending: str) -> None:
    sent: list[str] = []

    class Inner(RecordingTransport):
        def write(self, data: Any) -> None:
            sent.append(f"write {bytes(data).decode()}")

        def close(self) -> None:
            sent.append("close")
            super().close()

        def write_eof(self) -> None:
            sent.append("eof")

    corked = CorkedTransport(Inner(), asyncio.get_running_loop())
    corked.write(b"bye")
    getattr(corked, ending)()
    assert sent == ["write bye", "close" if ending == "close" else "eof"]


async def test_an_aborted_or_lost_connection_gets_nothing_more() -> None:
    inner = RecordingTransport()
    corked = CorkedTransport(inner, asyncio.get_running_loop())
    corked.write(b"lost")
    corked.abort()
    await asyncio.sleep(0)
    assert inner.aborted
    assert inner.writes == []
    lost = RecordingTransport()
    corked = CorkedTransport(lost, asyncio.get_running_loop())
    corked.write(b"late")
    lost.closed = True  # the peer went away before the loop turned
    await asyncio.sleep(0)
    assert lost.writes == []
