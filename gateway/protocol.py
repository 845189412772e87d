"""HTTP/1.1 in C (httptools), answering requests it cannot parse the way the gateway answers every error."""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MALFORMED_HTTP_MESSAGE = (
    "the request is not valid HTTP/1.1 and was not read: check its request line,"
    " and that header names and values hold only visible ASCII"
)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with its plain-text 400 replaced by the v1 JSON error body.

    A request the parser refuses never reaches the application, so this is the
    only place that can keep the promise that every error is JSON.
    """

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
