"""The REST floor of the stack: a bare Starlette endpoint on uvicorn that makes one trivial gRPC call.

Per request it asks the running platform's WhoAmI (no database) over one
shared channel, with an identity assertion obtained once at start, and answers
the gateway's WhoAmI JSON. What the gateway adds above this (authenticating
each request, routing, error mapping, metrics, the real RPC) is what the REST
figures measure against it. Runs in its own process so it has a core's worth
of event loop to itself, as the gateway does: uvloop and httptools when
installed.

Run: python -m bench.rest_floor --grpc-address HOST:PORT (token in DCP_BENCH_TOKEN);
prints "REST floor: http://127.0.0.1:PORT" once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.profiles_bench import pass_on_output
from dcp.schema.v1 import schema_service_pb2 as schema_pb
from dcp.schema.v1 import schema_service_pb2_grpc as schema_grpc
from services._runtime.identity import IDENTITY_METADATA_KEY

PATH = "/api/whoami"


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def http_parser() -> str:
    """The parser uvicorn picks by itself (http="auto"), as the gateway's does."""
    return "httptools" if has_module("httptools") else "h11"


def server_flavour() -> str:
    """How the floor is served: the event loop and the HTTP parser."""
    return f"{'uvloop' if has_module('uvloop') else 'asyncio'} + {http_parser()}"


def create_app(grpc_address: str, token: str) -> Starlette:
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with grpc.aio.insecure_channel(grpc_address) as channel:
            auth = await schema_grpc.AuthServiceStub(channel).Authenticate(schema_pb.AuthenticateRequest(token=token))
            state["schema"] = schema_grpc.SchemaServiceStub(channel)
            state["metadata"] = ((IDENTITY_METADATA_KEY, auth.assertion),)
            yield

    async def whoami(request: Request) -> JSONResponse:
        identity = await state["schema"].WhoAmI(schema_pb.WhoAmIRequest(), metadata=state["metadata"])
        return JSONResponse(
            {
                "accountId": str(identity.account_id),
                "accountName": identity.account_name,
                "scopes": list(identity.scopes),
                "credentialKind": identity.credential_kind,
            }
        )

    return Starlette(routes=[Route(PATH, whoami)], lifespan=lifespan)


async def serve(grpc_address: str, token: str) -> None:
    # IPPROTO_TCP as the gateway does: asyncio sets TCP_NODELAY on accepted
    # sockets only when their proto says TCP, and Nagle would otherwise hold
    # each response back until the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    config = uvicorn.Config(
        create_app(grpc_address, token),
        log_level="warning",
        access_log=False,
        http=http_parser(),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    print(f"REST floor: http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await task


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if has_module("uvloop"):
        import uvloop  # noqa: PLC0415 - optional: only when installed

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


def run(main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main)


def start_rest_floor(grpc_address: str, token: str) -> tuple[subprocess.Popen[str], str]:
    """The floor in its own process; returns it with its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.rest_floor", "--grpc-address", grpc_address],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "DCP_BENCH_TOKEN": token},
    )
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(r"REST floor: (http://\S+)", line):
            pass_on_output(process.stdout, "REST floor")
            return process, match.group(1)
        print(f"REST floor: {line.rstrip()}", flush=True)
    process.kill()
    raise SystemExit("the REST floor did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpc-address", required=True)
    options = parser.parse_args()
    run(serve(options.grpc_address, os.environ["DCP_BENCH_TOKEN"]))


if __name__ == "__main__":
    main()
