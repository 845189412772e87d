"""The importer's loop: find files, apply each table's files in order, tidy the bucket.

Tables proceed in parallel, up to a setting; within a table, one importer at
a time (a PostgreSQL advisory lock) applies the uploads oldest first, so a
later file's values win. Replicas share the work through those locks alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services._runtime import metrics, tracing
from services._runtime.logs import RepeatedFailures, failure_key
from services._runtime.s3 import ObjectStore, StoredObject, store_unreachable
from services._runtime.settings import ImportSettings
from services.imports.intake import Intake, event_objects
from services.imports.processing import Importer, Progress, RetryLater, stored_object
from services.imports.repository import ImportsRepository, Outcome, Upload

log = logging.getLogger(__name__)
# While the store or the database is down every round fails alike: logged once a minute, with a count.
_failures = RepeatedFailures(log)

# A table whose import could not finish waits this long before another try.
RETRY_SECONDS = 5.0
# How often an upload being imported shows in its history how far it has come.
PROGRESS_SECONDS = 0.5


class ShownProgress:
    """Writes an upload's row and byte counts so far into its history entry, about every PROGRESS_SECONDS.

    Asked from two sides. The import asks each time it hands a message of rows
    to the merge: reading, parsing and checking rows hold the event loop from one
    message to the next, for seconds on a loaded machine, so a timer alone would
    wake late, and each write waits for more turns of the loop (a connection, the
    statement's answer) and lands with figures long gone by; a short file could
    end before its first figures showed. A timer asks too, for the stretches in
    which the import waits and the figures still move (a remote merge catching up).
    """

    def __init__(self, repository: ImportsRepository, upload_id: int, progress: Progress) -> None:
        self._repo = repository
        self._upload_id = upload_id
        self._progress = progress
        self._shown = progress.figures()
        self._due = time.monotonic() + PROGRESS_SECONDS
        # One write at a time, so that the figures shown never go back.
        self._writing = asyncio.Lock()

    async def show_if_due(self) -> None:
        async with self._writing:
            figures = self._progress.figures()
            if figures == self._shown or time.monotonic() < self._due:
                return
            # Tried again a period later whatever happens: a slow database does not hold up the import at every message.
            self._due = time.monotonic() + PROGRESS_SECONDS
            try:
                await self._repo.note_progress(self._upload_id, *figures)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                # The import meets the outage itself if it lasts.
                log.debug("could not show the progress of upload %d: %s", self._upload_id, error)
                return
            self._shown = figures

    async def keep_showing(self) -> None:
        """Shows the figures as they move, until cancelled."""
        while True:
            await asyncio.sleep(max(self._due - time.monotonic(), 0.0) or PROGRESS_SECONDS)
            await self.show_if_due()


class ImportWorker:
    def __init__(
        self,
        intake: Intake,
        importer: Importer,
        repository: ImportsRepository,
        store: ObjectStore,
        settings: ImportSettings,
        *,
        queue: Any = None,
        on_finished: Callable[..., None] = metrics.import_finished,
    ) -> None:
        self._on_finished = on_finished
        self._intake = intake
        self._importer = importer
        self._repo = repository
        self._store = store
        self._settings = settings
        self._queue = queue
        self._wake = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._resting: dict[int, float] = {}
        # Failed tries of each upload that waits, for its backoff.
        self._retries: dict[int, int] = {}

    @property
    def busy(self) -> bool:
        """Whether an upload is being applied right now."""
        return bool(self._running)

    async def run(self) -> None:
        """Works until cancelled."""
        listener = asyncio.create_task(self._listen()) if self._queue is not None else None
        try:
            while True:
                await self.step()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._settings.poll_seconds)
                self._wake.clear()
        finally:
            if listener is not None:
                listener.cancel()
            for task in self._running.values():
                task.cancel()
            await asyncio.gather(listener or asyncio.sleep(0), *self._running.values(), return_exceptions=True)

    async def step(self) -> None:
        """One round: list the bucket, start idle tables, retry tidying."""
        try:
            await self._intake.poll()
        except Exception as error:  # noqa: BLE001 - logged with its traceback
            _failures.log(
                logging.ERROR,
                ("listing", *failure_key(error)),
                "listing the bucket failed; trying again every %g s",
                self._settings.poll_seconds,
                exc_info=error,
            )
        try:
            await self._dispatch()
            await self._dispose_leftovers()
        except Exception as error:  # noqa: BLE001 - logged with its traceback
            _failures.log(
                logging.ERROR,
                ("round", *failure_key(error)),
                "the import round failed; trying again every %g s",
                self._settings.poll_seconds,
                exc_info=error,
            )

    async def _dispatch(self) -> None:
        now = time.monotonic()
        for table_id in await self._repo.tables_with_open_uploads(self._store.bucket):
            if len(self._running) >= self._settings.concurrency:
                return
            if table_id in self._running or self._resting.get(table_id, 0.0) > now:
                continue
            task = asyncio.create_task(self._drain(table_id), name=f"import-table-{table_id}")
            self._running[table_id] = task
            task.add_done_callback(functools.partial(self._finished, table_id))

    def _finished(self, table_id: int, task: asyncio.Task[None]) -> None:
        self._running.pop(table_id, None)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            # The database went away under the table's import; it is taken up again next round.
            _failures.log(
                logging.ERROR,
                ("table", *failure_key(error)),
                "importing table %d stopped; it is tried again",
                table_id,
                exc_info=error,
            )
        # Another table may be waiting for a free slot.
        self._wake.set()

    async def _drain(self, table_id: int) -> None:
        async with self._repo.table_lock(self._store.bucket, table_id) as queue:
            if queue is None:
                return  # another importer holds the table
            while (upload := await queue.next()) is not None:
                with tracing.operation("import upload", {"dcp.upload_id": upload.id, "dcp.table_id": table_id}):
                    try:
                        outcome = await self._stoppable(upload)
                    except RetryLater as reason:
                        await self._retry_later(table_id, upload.id, str(reason))
                        return
                    except Exception as error:
                        if not store_unreachable(error):
                            log.exception("upload %d could not be applied; it will be tried again", upload.id)
                            self._resting[table_id] = time.monotonic() + RETRY_SECONDS
                            return
                        await self._retry_later(
                            table_id, upload.id, f"the file store cannot be reached ({type(error).__name__}: {error})"
                        )
                        return
                    self._retries.pop(upload.id, None)
                    await queue.finish(upload.id, outcome)
                self._on_finished(
                    outcome.status,
                    rows_imported=outcome.rows_ok,
                    rows_rejected=outcome.rows_failed,
                    lag_seconds=(datetime.now(UTC) - upload.object_modified).total_seconds(),
                )
                log.info(
                    "upload %d %s: %d rows, %d stored, %d refused%s",
                    upload.id,
                    outcome.status,
                    outcome.rows_total,
                    outcome.rows_ok,
                    outcome.rows_failed,
                    f" ({outcome.error})" if outcome.error else "",
                )
                await self._dispose(upload)

    async def _stoppable(self, upload: Upload) -> Outcome:
        """Imports one upload, stopping it when it is cancelled or its table or service archived.

        Stopping is safe while the file is still being read: the merge's
        transaction rolls back and nothing of the file is stored. Once every row
        has been handed over, the file is being committed and is let finish.
        """
        progress = Progress()
        shown = ShownProgress(self._repo, upload.id, progress)
        progress.handing_over = shown.show_if_due
        work = asyncio.create_task(self._importer.process(upload, progress), name=f"import-upload-{upload.id}")
        showing = asyncio.create_task(shown.keep_showing(), name=f"progress-upload-{upload.id}")
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=self._settings.cancel_check_seconds)
                if done:
                    return work.result()
                if progress.reading_done:
                    continue
                reason = await self._stop_reason(upload)
                if reason is None or progress.reading_done or work.done():
                    continue
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                log.info("upload %d stopped after %d rows: %s", upload.id, progress.rows_total, reason)
                return Outcome("failed", rows_total=progress.rows_total, bytes_read=progress.bytes_read, error=reason)
        finally:
            # Stopped before the outcome is written, so that no reading of the progress comes after it.
            showing.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
            await asyncio.gather(showing, return_exceptions=True)

    async def _stop_reason(self, upload: Upload) -> str | None:
        try:
            requested = await self._repo.cancel_reason(upload.id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return None  # asked again at the next check; the import itself meets the outage if it lasts
        if requested is not None:
            return requested
        return await self._importer.archived_reason(upload)

    async def _retry_later(self, table_id: int, upload_id: int, reason: str) -> None:
        """Rests the table, longer after each failed try, and says why in the upload's history entry."""
        attempt = self._retries.get(upload_id, 0) + 1
        self._retries[upload_id] = attempt
        pause = min(self._settings.retry_seconds * 2 ** (attempt - 1), self._settings.retry_max_seconds)
        self._resting[table_id] = time.monotonic() + pause
        note = f"{reason}; retrying in {pause:.3g} s (attempt {attempt})"
        log.warning("upload %d waits: %s", upload_id, note)
        try:
            await self._repo.note_retry(upload_id, note)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
            # The database is down too: the note waits for the next try.
            log.warning("could not record why upload %d waits: %s", upload_id, error)

    async def _dispose(self, upload: Upload) -> None:
        stored = stored_object(upload)
        try:
            if self._settings.after == "archive":
                await self._store.move(stored, f"{self._settings.archive_prefix}{upload.s3_key}.{upload.id}")
            elif self._settings.after == "delete":
                await self._store.delete(stored)
        except Exception:
            log.exception("could not %s %s; trying again later", self._settings.after, upload.s3_key)
            return
        await self._repo.mark_disposed(upload.id)

    async def _dispose_leftovers(self) -> None:
        for upload in await self._repo.undisposed(self._store.bucket):
            if upload.datasource_id not in self._running:
                await self._dispose(upload)

    async def _listen(self) -> None:
        """Starts imports as soon as the bucket's event notifications arrive."""
        queue_url = self._settings.queue_url
        while True:
            try:
                answer = await self._queue.receive_message(
                    QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=10
                )
                messages = answer.get("Messages", [])
                found: list[StoredObject] = []
                for message in messages:
                    objects, understood = event_objects(message.get("Body", ""))
                    if not understood:
                        log.warning("ignoring a queue message that is not an S3 event notification")
                    for key, version_id in objects:
                        head = await self._store.head(key, version_id)
                        if head is not None:
                            found.append(head)
                if found:
                    await self._intake.admit(found)
                    self._wake.set()
                for message in messages:
                    # Deleted only once recorded: a crash before this redelivers, and the record de-duplicates.
                    await self._queue.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the event queue failed; polling still finds every file")
                await asyncio.sleep(self._settings.poll_seconds)
