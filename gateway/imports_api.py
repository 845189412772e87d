"""Bulk upload under /experiment/v1/dcp_datasources/{id}/: upload history, template, validation, upload URLs."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any, Literal
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dcp.imports.v1 import imports_service_pb2 as pb
from dcp.imports.v1 import imports_service_pb2_grpc as pb_grpc
from gateway import v1json
from gateway.config_api import Call, Endpoint, Wrap, link_next_page, method_route, path_id, per_page
from gateway.errors import ApiError
from gateway.openapi import (
    COUNT,
    CSV_ATTACHMENT,
    ID,
    LINK,
    TEXT,
    TIMESTAMP,
    Body,
    Component,
    Operation,
    Query,
    Reply,
    array,
    described,
    nullable,
    record,
)
from gateway.responses import JSONResponse
from services._runtime.paging import all_pages
from services.domain.limits import MAX_FILE_NAME_CHARS, MAX_VALIDATE_BYTES

PREFIX = "/experiment/v1/dcp_datasources/{table_id}"
DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 100
MAX_URL_SECONDS = 7 * 24 * 3600
STATUS_NAMES = {
    pb.UPLOAD_STATUS_PENDING: "pending",
    pb.UPLOAD_STATUS_PROCESSING: "processing",
    pb.UPLOAD_STATUS_PROCESSED: "processed",
    pb.UPLOAD_STATUS_PARTIALLY_PROCESSED: "partially_processed",
    pb.UPLOAD_STATUS_FAILED: "failed",
}


def _moment(message: pb.Upload, name: Literal["received_at", "started_at", "finished_at"]) -> str | None:
    return v1json.timestamp(getattr(message, name)) if message.HasField(name) else None


_STATUS = {"type": "string", "enum": list(STATUS_NAMES.values())}
UPLOAD = Component(
    "Upload",
    record(
        {
            "id": ID,
            "dcp_datasource_id": ID,
            "file_name": TEXT,
            "s3_key": TEXT,
            "size_bytes": described(COUNT, "The stored object's size, as listed when the upload was recorded"),
            "bytes_read": described(
                COUNT,
                "Bytes of the stored object read (compressed bytes for a .gz file); while processing, so far;"
                " once finished, size_bytes for a file read whole",
            ),
            "status": _STATUS,
            "rows_total": described(COUNT, "Data rows read; while processing, so far"),
            "rows_ok": described(COUNT, "Rows stored, or to be stored when the file commits"),
            "rows_failed": described(COUNT, "Rows refused"),
            "errors_kept": described(COUNT, "Refused rows whose error is kept (rows_failed counts them all)"),
            "error": described(nullable(TEXT), "Why the whole file failed"),
            "received_at": nullable(TIMESTAMP),
            "started_at": nullable(TIMESTAMP),
            "finished_at": nullable(TIMESTAMP),
        }
    ),
)
ROW_PROBLEM = Component(
    "RowProblem",
    record(
        {
            "row": described(COUNT, "Spreadsheet row: the header is row 1, the first data row 2"),
            "column": described(TEXT, "The column named in the header, or empty for the whole row"),
            "value": described(TEXT, "The cell as written, cut to 200 characters"),
            "message": TEXT,
        }
    ),
)


def upload_json(message: pb.Upload) -> dict[str, Any]:
    return {
        "id": message.id,
        "dcp_datasource_id": message.dcp_datasource_id,
        "file_name": message.file_name,
        "s3_key": message.s3_key,
        "size_bytes": message.size_bytes,
        "bytes_read": message.bytes_read,
        "status": STATUS_NAMES.get(message.status, "pending"),
        "rows_total": message.rows_total,
        "rows_ok": message.rows_ok,
        "rows_failed": message.rows_failed,
        "errors_kept": message.errors_kept,
        "error": message.error or None,
        "received_at": _moment(message, "received_at"),
        "started_at": _moment(message, "started_at"),
        "finished_at": _moment(message, "finished_at"),
    }


def problem_json(problem: pb.RowProblem) -> dict[str, Any]:
    return {"row": problem.row, "column": problem.column, "value": problem.value, "message": problem.message}


UPLOAD_ERRORS = Component(
    "UploadErrors",
    record({"upload_id": ID, "rows_failed": COUNT, "errors_kept": COUNT, "errors": array(ROW_PROBLEM)}),
)
VALIDATION = Component(
    "Validation",
    record(
        {
            "status": described(_STATUS, "What an upload of this file would end as"),
            "rows_total": COUNT,
            "rows_ok": COUNT,
            "rows_failed": COUNT,
            "error": described(nullable(TEXT), "Why the whole file would fail"),
            "errors": array(ROW_PROBLEM),
        }
    ),
)
UPLOAD_URL = Component(
    "UploadUrl",
    record(
        {
            "url": described(TEXT, "A presigned URL to send the file to, with `method`"),
            "method": described(TEXT, "The HTTP method to send the file with"),
            "bucket": TEXT,
            "s3_key": TEXT,
            "expires_at": TIMESTAMP,
        }
    ),
)
_CSV: dict[str, Any] = {"type": "string", "description": "CSV text, UTF-8, with a header row"}
PER_PAGE = Query(
    "per_page",
    {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE, "default": DEFAULT_PER_PAGE},
    "How many to answer with",
)
PAGE_TOKEN = Query(
    "page_token",
    {"type": "string", "pattern": "^[A-Za-z0-9_=-]*$"},
    "The next page's token, as the previous page's Link header gives it; any other is refused",
)

LIST_UPLOADS = Operation(
    "listUploads",
    "A table's upload history, newest first",
    "Uploads",
    {200: Reply("One page of uploads", array(UPLOAD), headers={"Link": LINK})},
    query=(PER_PAGE, PAGE_TOKEN),
)
CREATE_UPLOAD_URL = Operation(
    "createUploadUrl",
    "A presigned URL to upload one CSV file to the table",
    "Uploads",
    {201: Reply("Where and how to send the file", UPLOAD_URL)},
    body=Body(
        record(
            {
                "file_name": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_FILE_NAME_CHARS,
                    "description": "A plain file name: no '/', '\\', control characters or '..'",
                },
                "expires_in_seconds": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_URL_SECONDS,
                    "description": "How long the URL works; 0 or absent for the default",
                },
            },
            optional=["expires_in_seconds"],
        ),
        description="The file to upload",
    ),
)
GET_UPLOAD = Operation("getUpload", "One upload and its progress", "Uploads", {200: Reply("The upload", UPLOAD)})
UPLOAD_ERRORS_OPERATION = Operation(
    "listUploadErrors",
    "The rows of an upload that were refused, and why",
    "Uploads",
    {
        200: Reply(
            "The refused rows kept, as JSON or (format=csv) as a CSV file",
            UPLOAD_ERRORS,
            headers={"Content-Disposition": CSV_ATTACHMENT},
            alternatives={"text/csv": _CSV},
        )
    },
    query=(
        Query(
            "format",
            {"type": "string", "enum": ["json", "csv"], "default": "json"},
            "json, or csv for a file with the columns row, column, value, message",
        ),
    ),
)
CANCEL_UPLOAD = Operation(
    "cancelUpload",
    "Cancel an upload that has not finished",
    "Uploads",
    {202: Reply("The upload; one being imported stops within seconds", UPLOAD)},
)
TEMPLATE = Operation(
    "getUploadTemplate",
    "A CSV template for the table: its key column and active attributes",
    "Uploads",
    {200: Reply("The template file", _CSV, media_type="text/csv", headers={"Content-Disposition": CSV_ATTACHMENT})},
)
VALIDATE = Operation(
    "validateUpload",
    "Check a CSV file as an upload of it would, storing nothing",
    "Uploads",
    {200: Reply("What an upload of the file would end as", VALIDATION)},
    description=f"The body is the file itself (any media type), at most {MAX_VALIDATE_BYTES} bytes. "
    "One file of an account is checked at a time; another sent meanwhile is refused with 429.",
    # No body is an empty file, which an upload would fail with "the file is empty"; the report says so.
    body=Body(_CSV, media_type="text/csv", required=False, description="The file to check"),
    query=(
        Query("file_name", {"type": "string", "default": "upload.csv"}, "The file's name, as it would be uploaded"),
    ),
    retry_after_on_429=False,
)


def attachment(file_name: str) -> str:
    """A Content-Disposition for any file name (RFC 6266). Header values are Latin-1 on the wire, so a name
    made from a table's (any Unicode) travels percent-encoded as UTF-8 in `filename*`, beside a printable
    ASCII stand-in in `filename` for clients that read only that."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in file_name)
    if fallback == file_name:
        return f'attachment; filename="{file_name}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(file_name, safe='')}"


def _per_page(request: Request) -> int:
    return per_page(request, default=DEFAULT_PER_PAGE, maximum=MAX_PER_PAGE)


class ImportsApi:
    def __init__(self, imports: pb_grpc.ImportsServiceAsyncStub) -> None:
        self._imports = imports

    def routes(self, wrap: Wrap) -> list[Route]:
        def route(path: str, methods: dict[str, tuple[Endpoint, Operation]]) -> Route:
            return method_route(wrap, PREFIX + path, methods)

        return [
            route(
                "/uploads",
                {"GET": (self.list_uploads, LIST_UPLOADS), "POST": (self.upload_url, CREATE_UPLOAD_URL)},
            ),
            route("/uploads/{upload_id}", {"GET": (self.get_upload, GET_UPLOAD)}),
            route("/uploads/{upload_id}/errors", {"GET": (self.upload_errors, UPLOAD_ERRORS_OPERATION)}),
            route("/uploads/{upload_id}/cancel", {"POST": (self.cancel_upload, CANCEL_UPLOAD)}),
            route("/template", {"GET": (self.template, TEMPLATE)}),
            route("/validate", {"POST": (self.validate, VALIDATE)}),
        ]

    async def list_uploads(self, request: Request, call: Call) -> Response:
        answer = await self._imports.ListUploads(
            pb.ListUploadsRequest(
                dcp_datasource_id=path_id(request, "table_id"),
                page_size=_per_page(request),
                page_token=request.query_params.get("page_token", ""),
            ),
            metadata=call.metadata,
        )
        return link_next_page(
            JSONResponse([upload_json(u) for u in answer.uploads]),
            request,
            size=_per_page(request),
            page_token=answer.next_page_token,
        )

    async def get_upload(self, request: Request, call: Call) -> Response:
        answer = await self._imports.GetUpload(
            pb.GetUploadRequest(
                dcp_datasource_id=path_id(request, "table_id"), upload_id=path_id(request, "upload_id")
            ),
            metadata=call.metadata,
        )
        return JSONResponse(upload_json(answer))

    async def cancel_upload(self, request: Request, call: Call) -> Response:
        # 202: a file being imported stops within seconds, after this answer.
        answer = await self._imports.CancelUpload(
            pb.CancelUploadRequest(
                dcp_datasource_id=path_id(request, "table_id"), upload_id=path_id(request, "upload_id")
            ),
            metadata=call.metadata,
        )
        return JSONResponse(upload_json(answer), status_code=202)

    async def upload_errors(self, request: Request, call: Call) -> Response:
        output = request.query_params.get("format", "json")
        if output not in ("json", "csv"):
            raise ApiError.field("format", "must be 'json' or 'csv'")
        table_id = path_id(request, "table_id")
        upload_id = path_id(request, "upload_id")
        pages = all_pages(
            lambda token: self._imports.ListUploadErrors(
                pb.ListUploadErrorsRequest(
                    dcp_datasource_id=table_id, upload_id=upload_id, page_size=10_000, page_token=token
                ),
                metadata=call.metadata,
            )
        )
        problems: list[pb.RowProblem] = []
        page = pb.ListUploadErrorsResponse()
        async for page in pages:
            problems.extend(page.errors)
        if output == "csv":
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow(["row", "column", "value", "message"])
            writer.writerows([p.row, p.column, p.value, p.message] for p in problems)
            return Response(
                out.getvalue(),
                media_type="text/csv; charset=utf-8",
                headers={"content-disposition": attachment(f"upload-{upload_id}-errors.csv")},
            )
        return JSONResponse(
            {
                "upload_id": upload_id,
                "rows_failed": page.rows_failed,
                "errors_kept": page.errors_kept,
                "errors": [problem_json(p) for p in problems],
            }
        )

    async def template(self, request: Request, call: Call) -> Response:
        answer = await self._imports.GetTemplate(
            pb.GetTemplateRequest(dcp_datasource_id=path_id(request, "table_id")), metadata=call.metadata
        )
        return Response(
            answer.csv,
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": attachment(answer.file_name)},
        )

    async def validate(self, request: Request, call: Call) -> Response:
        table_id = path_id(request, "table_id")
        file_name = request.query_params.get("file_name", "upload.csv")

        too_large = False

        async def messages() -> AsyncIterator[pb.ValidateFileRequest]:
            nonlocal too_large
            yield pb.ValidateFileRequest(dcp_datasource_id=table_id, file_name=file_name)
            received = 0
            pending = bytearray()
            async for piece in request.stream():
                received += len(piece)
                if received > MAX_VALIDATE_BYTES:
                    too_large = True
                    return
                pending += piece
                if len(pending) >= 1024 * 1024:
                    yield pb.ValidateFileRequest(chunk=bytes(pending))
                    pending.clear()
            if pending:
                yield pb.ValidateFileRequest(chunk=bytes(pending))

        report = await self._imports.ValidateFile(messages(), metadata=call.metadata)
        if too_large:
            raise ApiError(
                413, f"a file to validate may have at most {MAX_VALIDATE_BYTES} bytes", code="PAYLOAD_TOO_LARGE"
            )
        return JSONResponse(
            {
                "status": STATUS_NAMES.get(report.status, "failed"),
                "rows_total": report.rows_total,
                "rows_ok": report.rows_ok,
                "rows_failed": report.rows_failed,
                "error": report.error or None,
                "errors": [problem_json(p) for p in report.errors],
            }
        )

    async def upload_url(self, request: Request, call: Call) -> Response:
        body = await call.json()
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="MALFORMED_REQUEST")
        unknown = sorted(set(body) - {"file_name", "expires_in_seconds"})
        if unknown:
            raise ApiError.field(unknown[0], "is not a field of this request")
        name = body.get("file_name")
        if not isinstance(name, str):
            raise ApiError.field("file_name", "is required and must be a string")
        expires = body.get("expires_in_seconds", 0)
        if isinstance(expires, bool) or not isinstance(expires, int) or not 0 <= expires <= MAX_URL_SECONDS:
            raise ApiError.field("expires_in_seconds", f"must be an integer between 1 and {MAX_URL_SECONDS}")
        answer = await self._imports.CreateUploadUrl(
            pb.CreateUploadUrlRequest(
                dcp_datasource_id=path_id(request, "table_id"), file_name=name, expires_in_seconds=expires
            ),
            metadata=call.metadata,
        )
        return JSONResponse(
            {
                "url": answer.url,
                "method": answer.method,
                "bucket": answer.bucket,
                "s3_key": answer.s3_key,
                "expires_at": v1json.timestamp(answer.expires_at),
            },
            status_code=201,
        )
