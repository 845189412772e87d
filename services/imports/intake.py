"""Finding uploads: S3 listings and event notifications become upload records.

Every object version found under a table's path becomes one upload, however
often it is seen: the record's uniqueness in PostgreSQL, not this process's
memory, is what de-duplicates listings, repeated events and replicas.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from services._runtime.s3 import ObjectStore, StoredObject
from services.imports.repository import ImportsRepository, NewUpload, Upload
from services.schema.client import ImportTarget, ImportTargetsClient

log = logging.getLogger(__name__)

UPLOAD_ROOT = "dcp/"
_KEY = re.compile(r"^dcp/(\d{1,18})/(\d{1,18})/(.+)$")


@dataclass(frozen=True)
class KeyPlace:
    service_id: int
    table_id: int
    file_name: str


def place_of(key: str) -> KeyPlace | str:
    """Where a key belongs, or why it belongs nowhere."""
    match = _KEY.match(key)
    if match is None:
        return "is not under dcp/{service id}/{table id}/"
    rest = match.group(3)
    segments = rest.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return "has an empty, '.' or '..' path segment"
    return KeyPlace(int(match.group(1)), int(match.group(2)), segments[-1])


class Intake:
    """Records new object versions as pending uploads, in the order they arrived."""

    def __init__(self, store: ObjectStore, repository: ImportsRepository, targets: ImportTargetsClient) -> None:
        self._store = store
        self._repo = repository
        self._targets = targets
        # Each ignored key is logged once per process, not on every listing.
        self._ignored: set[str] = set()

    async def poll(self) -> list[Upload]:
        listed = [found async for found in self._store.list(UPLOAD_ROOT)]
        return await self.admit(listed)

    async def admit(self, objects: Iterable[StoredObject]) -> list[Upload]:
        # A key ending in "/" is a "folder" made by a console or a client like Cyberduck.
        objects = [found for found in objects if not found.key.endswith("/")]
        if not objects:
            return []  # the usual round: every file imported and moved away
        targets = {target.table_id: target for target in await self._targets.all()}
        candidates: list[tuple[StoredObject, KeyPlace, ImportTarget]] = []
        # Stable: versions of one key stay in the order the listing gave them.
        for found in sorted(objects, key=lambda o: o.last_modified):
            admitted = self._admissible(found, targets)
            if admitted is not None:
                candidates.append((found, *admitted))
        if not candidates:
            return []
        known = await self._repo.known(
            self._store.bucket,
            [(found.key, found.version_id, found.etag, found.last_modified) for found, _, _ in candidates],
        )
        fresh = [
            NewUpload(
                bucket=self._store.bucket,
                account_id=target.account_id,
                dcp_service_id=target.service_id,
                datasource_id=target.table_id,
                s3_key=found.key,
                version_id=found.version_id,
                etag=found.etag,
                object_modified=found.last_modified,
                file_name=place.file_name,
                size_bytes=found.size,
            )
            for found, place, target in candidates
            if (found.key, found.version_id, found.etag, found.last_modified) not in known
        ]
        created = await self._repo.record(fresh)
        for upload in created:
            log.info(
                "upload %d: %s (%d bytes) for table %d",
                upload.id,
                upload.s3_key,
                upload.size_bytes,
                upload.datasource_id,
            )
        return created

    def _admissible(
        self, found: StoredObject, targets: dict[int, ImportTarget]
    ) -> tuple[KeyPlace, ImportTarget] | None:
        place = place_of(found.key)
        if isinstance(place, str):
            self._ignore(found.key, place)
            return None
        target = targets.get(place.table_id)
        if target is None or target.service_id != place.service_id:
            self._ignore(found.key, f"names no table {place.table_id} of DCP service {place.service_id}")
            return None
        return place, target

    def _ignore(self, key: str, reason: str) -> None:
        if key not in self._ignored:
            self._ignored.add(key)
            log.warning("ignoring s3 object %r: the key %s", key, reason)


def event_objects(body: str) -> tuple[list[tuple[str, str]], bool]:
    """(key, version id) of each created object in an S3 event notification, and whether it was understood.

    Keys arrive URL-encoded, with '+' for spaces. Test events and events of
    other kinds name nothing.
    """
    try:
        message: Any = json.loads(body)
    except ValueError:
        return [], False
    if isinstance(message, dict) and "Message" in message and "Records" not in message:
        # Delivered through SNS: the S3 event is the envelope's message.
        try:
            message = json.loads(message["Message"])
        except (TypeError, ValueError):
            return [], False
    if not isinstance(message, dict):
        return [], False
    if message.get("Event") == "s3:TestEvent":
        return [], True
    found: list[tuple[str, str]] = []
    for record in message.get("Records", ()):
        if not isinstance(record, dict) or not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        s3 = record.get("s3", {})
        key = s3.get("object", {}).get("key")
        if isinstance(key, str):
            found.append((unquote_plus(key), str(s3.get("object", {}).get("versionId") or "")))
    return found, True
