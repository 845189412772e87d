"""The secrets key that `dcp up` keeps in its data dir when DCP_SECRETS_KEY is not set.

One key a line: the first seals, the others (left by `dcp secrets rotate`) still open.
The file is the owner's alone, like the first account's token beside it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from services.schema.sealing import new_key


def read_keys(path: Path) -> list[str]:
    """The file's keys, current first; none when there is no file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_or_create_keys(path: Path) -> list[str]:
    """The file's keys; on the first start, a new key in a new owner-only file."""
    keys = read_keys(path)
    if keys:
        return keys
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of two processes starting at once on a new data dir, one writes and both use its key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_keys(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(new_key() + "\n")
    return read_keys(path)


def replace_keys(path: Path, keys: Sequence[str]) -> None:
    """Writes the keys at once: a reader sees the old file or the new one, never half of either."""
    staging = path.with_name(path.name + ".new")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(f"{key}\n" for key in keys))
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(staging, 0o600)
    os.replace(staging, path)
