"""gRPC face of imports: the upload history and its tools."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime

from google.protobuf import timestamp_pb2

from dcp.imports.v1 import imports_service_pb2 as pb
from dcp.imports.v1 import imports_service_pb2_grpc as pb_grpc
from services._runtime.errors import DcpError, InvalidArgument
from services._runtime.grpc_types import ServicerContext as Context
from services._runtime.identity import Scope, caller
from services._runtime.paging import next_token, read_page
from services._runtime.server import ServiceBinding
from services.domain.batches import RowError
from services.domain.limits import MAX_VALIDATE_BYTES
from services.imports.repository import Outcome, Upload
from services.imports.uploads import UploadHistory

STATUS = {
    "pending": pb.UPLOAD_STATUS_PENDING,
    "processing": pb.UPLOAD_STATUS_PROCESSING,
    "processed": pb.UPLOAD_STATUS_PROCESSED,
    "partially_processed": pb.UPLOAD_STATUS_PARTIALLY_PROCESSED,
    "failed": pb.UPLOAD_STATUS_FAILED,
}
MAX_REPORT_ERRORS = 1000


def _timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def upload_to_proto(upload: Upload) -> pb.Upload:
    return pb.Upload(
        id=upload.id,
        dcp_datasource_id=upload.datasource_id,
        file_name=upload.file_name,
        s3_key=upload.s3_key,
        size_bytes=upload.size_bytes,
        status=STATUS[upload.status],
        rows_total=upload.rows_total,
        rows_ok=upload.rows_ok,
        rows_failed=upload.rows_failed,
        error=upload.error,
        received_at=_timestamp(upload.received_at),
        started_at=_timestamp(upload.started_at),
        finished_at=_timestamp(upload.finished_at),
        errors_kept=upload.errors_kept,
        bytes_read=upload.bytes_read,
    )


def problem_to_proto(error: RowError) -> pb.RowProblem:
    return pb.RowProblem(row=error.row_number, column=error.field, value=error.value, message=error.message)


def report_to_proto(outcome: Outcome) -> pb.ValidationReport:
    return pb.ValidationReport(
        status=STATUS[outcome.status],
        rows_total=outcome.rows_total,
        rows_ok=outcome.rows_ok,
        rows_failed=outcome.rows_failed,
        error=outcome.error,
        errors=[problem_to_proto(e) for e in outcome.errors[:MAX_REPORT_ERRORS]],
    )


class ImportsServicer(pb_grpc.ImportsServiceServicer):
    def __init__(self, history: UploadHistory) -> None:
        self._history = history

    async def ListUploads(self, request: pb.ListUploadsRequest, context: Context) -> pb.ListUploadsResponse:
        identity = caller(Scope.READ)
        scope = f"uploads:{identity.account_id}:{request.dcp_datasource_id}"
        page = read_page(request.page_size, request.page_token, scope=scope)
        uploads = await self._history.uploads(identity, request.dcp_datasource_id, page)
        return pb.ListUploadsResponse(
            uploads=[upload_to_proto(u) for u in uploads[: page.size]],
            next_page_token=next_token([u.id for u in uploads], page, scope=scope),
        )

    async def GetUpload(self, request: pb.GetUploadRequest, context: Context) -> pb.Upload:
        identity = caller(Scope.READ)
        return upload_to_proto(await self._history.get(identity, request.dcp_datasource_id, request.upload_id))

    async def CancelUpload(self, request: pb.CancelUploadRequest, context: Context) -> pb.Upload:
        identity = caller(Scope.WRITE)
        return upload_to_proto(await self._history.cancel(identity, request.dcp_datasource_id, request.upload_id))

    async def ListUploadErrors(
        self, request: pb.ListUploadErrorsRequest, context: Context
    ) -> pb.ListUploadErrorsResponse:
        identity = caller(Scope.READ)
        scope = f"upload-errors:{identity.account_id}:{request.upload_id}"
        page = read_page(request.page_size, request.page_token, scope=scope, max_size=10_000)
        upload, errors = await self._history.errors(identity, request.dcp_datasource_id, request.upload_id, page)
        return pb.ListUploadErrorsResponse(
            errors=[problem_to_proto(e) for _, e in errors[: page.size]],
            next_page_token=next_token([seq for seq, _ in errors], page, scope=scope),
            rows_failed=upload.rows_failed,
            errors_kept=upload.errors_kept,
        )

    async def GetTemplate(self, request: pb.GetTemplateRequest, context: Context) -> pb.Template:
        identity = caller(Scope.READ)
        name, text = await self._history.template(identity, request.dcp_datasource_id)
        return pb.Template(file_name=name, csv=text)

    async def ValidateFile(
        self, request_iterator: AsyncIterator[pb.ValidateFileRequest], context: Context
    ) -> pb.ValidationReport:
        # Checking rows runs the write path's validator, which only writers may call.
        identity = caller(Scope.WRITE)
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None:
            raise InvalidArgument.field("dcp_datasource_id", "the stream sent no message naming the table")

        received = len(first.chunk)

        async def following() -> AsyncIterator[bytes]:
            """The chunks of the messages after the first, within the file bound."""
            nonlocal received
            async for message in messages:
                received += len(message.chunk)
                if received > MAX_VALIDATE_BYTES:
                    raise InvalidArgument.field(
                        "chunk", f"a file to validate may have at most {MAX_VALIDATE_BYTES} bytes"
                    )
                if message.chunk:
                    yield message.chunk

        async def chunks() -> AsyncIterator[bytes]:
            if first.chunk:
                yield first.chunk
            async for chunk in following():
                yield chunk

        try:
            outcome = await self._history.validate(identity, first.dcp_datasource_id, first.file_name, chunks())
        except DcpError:
            # A grpc aio client still writing when the call ends reports INTERNAL in place of the status it was
            # sent (grpc/grpc#36066), so a refusal waits for the caller's last message, within the file bound.
            with contextlib.suppress(InvalidArgument):
                async for _ in following():
                    pass
            raise
        return report_to_proto(outcome)

    async def CreateUploadUrl(self, request: pb.CreateUploadUrlRequest, context: Context) -> pb.UploadUrl:
        identity = caller(Scope.WRITE)
        url = await self._history.upload_url(
            identity, request.dcp_datasource_id, request.file_name, request.expires_in_seconds
        )
        return pb.UploadUrl(
            url=url.url, method="PUT", s3_key=url.key, bucket=url.bucket, expires_at=_timestamp(url.expires_at)
        )


def bindings(history: UploadHistory) -> list[ServiceBinding]:
    servicer = ImportsServicer(history)
    return [
        ServiceBinding(
            service_names=(pb.DESCRIPTOR.services_by_name["ImportsService"].full_name,),
            register=lambda server: pb_grpc.add_ImportsServiceServicer_to_server(servicer, server),
        )
    ]
