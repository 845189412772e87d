"""Process settings, read from the environment once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services._runtime.errors import InvalidArgument


def default_data_dir() -> Path:
    """Where `dcp up` and the CLI keep and look for the platform's data without --data-dir or DCP_DATA_DIR."""
    return Path(os.path.expanduser("~")) / ".local" / "share" / "open-dcp"


# Serving processes of `dcp up`: without a choice, one per usable core but one, up to the first figure;
# a choice may go up to the second.
DEFAULT_MAX_PROCESSES = 8
MAX_PROCESSES = 64


@dataclass(frozen=True)
class OAuthSettings:
    """Where OAuth 2.0 access tokens come from and how they map to accounts."""

    issuer: str | None = None
    """Expected `iss`; OAuth bearer tokens are refused while unset."""
    audience: str | None = None
    """Expected `aud`."""
    jwks_url: str | None = None
    """JWKS document with the issuer's signing keys."""
    public_key_file: Path | None = None
    """PEM public key, an alternative to `jwks_url`."""
    account_claim: str = "account_id"
    """Claim holding the Open DCP account id: a JSON integer from 1 to 2^63-1 (a string, float or
    boolean claim makes the token invalid)."""
    read_scope: str = "dcp:read"
    """Scope that grants reads."""
    write_scope: str = "dcp:write"
    """Scope that grants changes (and reads)."""
    leeway_seconds: int = 30
    """Clock skew tolerated on `exp` and `nbf`."""

    @property
    def enabled(self) -> bool:
        return self.issuer is not None and (self.jwks_url is not None or self.public_key_file is not None)


@dataclass(frozen=True)
class S3Settings:
    """The S3-compatible store that customers drop files into."""

    endpoint_url: str | None = None
    """Store endpoint (MinIO, Ceph, a local server). Unset: AWS itself, except
    under `dcp up`, which then starts an embedded S3 server."""
    region: str = "us-east-1"
    """Region of the bucket."""
    bucket: str = "optimizely-import"
    """Bucket holding every table's upload prefix."""
    access_key_id: str | None = None
    """The platform's own key; unset uses the standard AWS credential chain
    (environment, web identity on Kubernetes, instance profile). For the
    embedded server of `dcp up`, the one key with every right; unset, a new
    one is made at each start and known only to that `dcp up`."""
    secret_access_key: str | None = None
    """Secret of `access_key_id`."""
    addressing_style: str = "auto"
    """`path`, `virtual` or `auto` (path-style for a custom endpoint)."""
    connect_timeout_seconds: float = 5.0
    """How long opening a connection to the store may take (each of the client's
    tries); a store that does not answer makes a request fail with 503 UNAVAILABLE
    and an import wait and retry."""
    provision_keys: bool = False
    """Create an IAM user per DCP service, limited to its prefix, and hand out
    that user's keys; needs a store with an IAM API."""
    embedded_port: int = 9000
    """Port of the embedded S3 server that `dcp up` starts without an endpoint
    (0 picks a free one; `dcp up --s3-port` overrides it). It runs in a process of its own that stops with
    `dcp up`, accepts only SigV4-signed requests, keeps each DCP service's key
    to `dcp/{service id}/` and `exports/{service id}/`, and keeps object
    bodies over 64 KiB in files under `{data dir}/s3/bodies` (emptied at each
    start: its objects last as long as the process)."""


@dataclass(frozen=True)
class ImportSettings:
    """How uploaded files are found and applied."""

    poll_seconds: float = 2.0
    """Pause between listings of the bucket."""
    retry_seconds: float = 5.0
    """Pause before an upload that could not go on (the store or a service cannot
    be reached) is tried again; it doubles with every further try."""
    retry_max_seconds: float = 60.0
    """Longest pause between such tries."""
    queue_url: str | None = None
    """SQS queue receiving the bucket's event notifications; files then start
    at once, and polling remains as the safety net."""
    after: str = "archive"
    """What becomes of a processed object: `archive`, `delete` or `keep`."""
    archive_prefix: str = "archive/"
    """Where processed objects move when `after` is `archive`."""
    max_errors: int = 10_000
    """Error rows kept per upload; the rest are counted."""
    concurrency: int = 4
    """Tables imported at once by one process."""
    max_file_bytes: int = 5 * 1024**3
    """Larger objects are refused without being read."""
    max_field_chars: int = 1024 * 1024
    """A longer field fails its file."""
    max_inflated_bytes: int = 20 * 1024**3
    """A file whose text (after gzip decompression) grows past this many bytes fails."""
    max_rows: int = 50_000_000
    """A file with more data rows fails; nothing of it is stored."""
    max_compression_ratio: int = 100
    """A gzip file inflating to more than this many times its compressed size fails (a
    decompression bomb); checked once it has inflated past `ratio_check_bytes`."""
    ratio_check_bytes: int = 16 * 1024**2
    """Inflated bytes before the compression ratio is judged: small files may compress far better."""
    worker_processes: bool = True
    """Apply uploads in a child process (`dcp up`, `dcp serve imports`), so that parsing a file
    never delays a request the serving process answers."""
    validate_workers: int = 2
    """Processes that check files posted to `validate`; each checks one file at a time."""
    validate_seconds: float = 60.0
    """Longest a file posted to `validate` is checked; past it the call answers 400
    `CHECK_TOO_LONG` (the file can still be uploaded). One check at a time per account."""
    cancel_check_seconds: float = 1.0
    worker_max_growth_bytes: int = 32 * 1024**2
    """An idle import worker whose memory has grown this much past what it had when it
    started is replaced by a fresh one, so a large file's peak is not kept; 0 never replaces it."""
    """How often a running import looks whether it was cancelled, or its table or service archived."""


@dataclass(frozen=True)
class Settings:
    """Settings shared by every Open DCP process; see README "Configuration"."""

    database_url: str | None = None
    """PostgreSQL DSN. Unset: `dcp up` starts an embedded server in the data dir."""
    data_dir: Path = field(default_factory=default_data_dir)
    """Where `dcp up` keeps the embedded database, the first account's token and the secrets key
    (`--data-dir` overrides it); the admin commands (`dcp accounts`, `tokens`, `secrets`, `migrate`)
    find the embedded database there the same way, and never make one."""
    http_host: str = "127.0.0.1"
    """Interface the REST gateway listens on."""
    http_port: int = 8080
    """REST gateway port (0 picks a free one)."""
    grpc_host: str = "127.0.0.1"
    """Interface the gRPC server listens on."""
    grpc_port: int = 50051
    """gRPC port (0 picks a free one)."""
    schema_address: str | None = None
    """host:port of a remote schema service; unset means in this process."""
    profiles_address: str | None = None
    """host:port of a remote profiles service; unset means in this process."""
    aliases_address: str | None = None
    """host:port of a remote aliases service; unset means in this process."""
    imports_address: str | None = None
    """host:port of a remote imports service; unset means in this process."""
    identity_key: str | None = None
    """Shared secret that signs caller-identity assertions between services.
    Required when services run in separate processes; `dcp up` makes one."""
    identity_ttl_seconds: int = 300
    """How long an identity assertion stays valid."""
    secrets_key: str | None = field(default=None, repr=False)
    """Key (base64 of 32 random bytes, `dcp secrets new-key`) that seals the DCP
    services' S3 secret keys in the database with AES-256-GCM. Required by
    `dcp serve schema`; unset, `dcp up` makes one on its first start and keeps
    it owner-only in the data dir (`secrets.key`)."""
    secrets_previous_keys: tuple[str, ...] = field(default=(), repr=False)
    """Further keys (comma-separated in the environment) that still open secrets
    sealed with them, but never seal: the previous key after a rotation, until
    `dcp secrets rotate` has sealed every row anew and every replica runs with
    the new key; or the next key, given to every replica before a rotation."""
    max_active_services_per_account: int = 1
    """Active DCP services one account may have (v1 allows one)."""
    db_pool_min_size: int = 1
    """Connections each process keeps open."""
    db_pool_max_size: int = 10
    """Connections each process may open."""
    db_connect_timeout_seconds: float = 5.0
    """How long opening a database connection may take; a server that does not
    answer in time makes the request fail with 503 UNAVAILABLE."""
    db_acquire_timeout_seconds: float = 10.0
    """How long a request waits for a free pooled connection before it fails with 503."""
    db_statement_timeout_seconds: float = 60.0
    """PostgreSQL's `statement_timeout`, set on every connection of the pool: a
    longer statement is cancelled and its request fails with 503. 0 turns it off."""
    db_command_timeout_seconds: float = 65.0
    """How long the client waits for any statement's answer before it gives up on
    the connection (a server that vanished without closing it); above
    `db_statement_timeout_seconds`, so the server's own cancel normally comes first."""
    db_health_interval_seconds: float = 2.0
    """How often each service checks that its database answers `SELECT 1`; its gRPC
    health (and so the gateway's `/readyz`) is NOT_SERVING while it does not."""
    db_health_timeout_seconds: float = 2.0
    """How long that check may take before the database counts as unreachable."""
    shutdown_grace_seconds: float = 10.0
    """Time in-flight calls get on SIGTERM; keep it below Kubernetes' grace period."""
    processes: int | None = None
    """Serving processes `dcp up` runs, sharing its ports (`dcp up --processes` overrides it);
    unset, one per usable core but one, at most `DEFAULT_MAX_PROCESSES`. One process when rate
    limits are on without `redis_url`, since each process would keep limits of its own."""
    max_body_bytes: int = 1024 * 1024
    """Largest REST request body accepted (413 beyond)."""
    registry_cache_seconds: float = 1.0
    """How long profiles and aliases trust their copy of a service's tables and
    attributes: an archived attribute or table is refused within this time."""
    export_poll_seconds: float = 5.0
    """How often a profiles process looks for exports that no process is running
    (one interrupted by a crash) and runs them again."""
    metrics_port: int | None = None
    """Port of the Prometheus endpoint (`/metrics`) of a process started by
    `dcp serve`; unset serves none. `dcp up` serves metrics on the gateway's port."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP endpoint traces are exported to (e.g. http://collector:4318); unset exports none."""
    rate_limit_per_second: float = 0.0
    """Requests per second one account may make through the gateway; 0 is no limit."""
    rate_limit_burst: int = 0
    """Requests an account may make at once above the steady rate; 0 means one second's worth."""
    redis_url: str | None = None
    """Redis shared by gateway replicas for rate limits (e.g. redis://redis:6379/0); unset keeps them in process."""
    log_format: str = "text"
    """`text` for terminals, `json` for production."""
    log_level: str = "INFO"
    """Root log level."""
    oauth: OAuthSettings = field(default_factory=OAuthSettings)
    """OAuth 2.0 access-token verification."""
    s3: S3Settings = field(default_factory=S3Settings)
    """The upload store."""
    imports: ImportSettings = field(default_factory=ImportSettings)
    """File intake."""

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        reader = _EnvReader(env)
        oauth = OAuthSettings(
            issuer=reader.text("DCP_OAUTH_ISSUER"),
            audience=reader.text("DCP_OAUTH_AUDIENCE"),
            jwks_url=reader.text("DCP_OAUTH_JWKS_URL"),
            public_key_file=reader.path("DCP_OAUTH_PUBLIC_KEY_FILE"),
            account_claim=reader.text("DCP_OAUTH_ACCOUNT_CLAIM") or "account_id",
            read_scope=reader.text("DCP_OAUTH_READ_SCOPE") or "dcp:read",
            write_scope=reader.text("DCP_OAUTH_WRITE_SCOPE") or "dcp:write",
            leeway_seconds=reader.integer("DCP_OAUTH_LEEWAY_SECONDS", 30, minimum=0),
        )
        settings = cls(
            database_url=reader.text("DCP_DATABASE_URL"),
            data_dir=reader.path("DCP_DATA_DIR") or default_data_dir(),
            http_host=reader.text("DCP_HTTP_HOST") or "127.0.0.1",
            http_port=reader.integer("DCP_HTTP_PORT", 8080, minimum=0, maximum=65535),
            grpc_host=reader.text("DCP_GRPC_HOST") or "127.0.0.1",
            grpc_port=reader.integer("DCP_GRPC_PORT", 50051, minimum=0, maximum=65535),
            schema_address=reader.text("DCP_SCHEMA_ADDRESS"),
            profiles_address=reader.text("DCP_PROFILES_ADDRESS"),
            aliases_address=reader.text("DCP_ALIASES_ADDRESS"),
            imports_address=reader.text("DCP_IMPORTS_ADDRESS"),
            identity_key=reader.text("DCP_IDENTITY_KEY"),
            identity_ttl_seconds=reader.integer("DCP_IDENTITY_TTL_SECONDS", 300, minimum=5),
            secrets_key=reader.text("DCP_SECRETS_KEY"),
            secrets_previous_keys=reader.items("DCP_SECRETS_PREVIOUS_KEYS"),
            max_active_services_per_account=reader.integer("DCP_MAX_ACTIVE_SERVICES_PER_ACCOUNT", 1, minimum=1),
            db_pool_min_size=reader.integer("DCP_DB_POOL_MIN_SIZE", 1, minimum=0),
            db_pool_max_size=reader.integer("DCP_DB_POOL_MAX_SIZE", 10, minimum=1),
            db_connect_timeout_seconds=reader.number("DCP_DB_CONNECT_TIMEOUT_SECONDS", 5.0, minimum=0.1),
            db_acquire_timeout_seconds=reader.number("DCP_DB_ACQUIRE_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            db_statement_timeout_seconds=reader.number("DCP_DB_STATEMENT_TIMEOUT_SECONDS", 60.0, minimum=0.0),
            db_command_timeout_seconds=reader.number("DCP_DB_COMMAND_TIMEOUT_SECONDS", 65.0, minimum=0.1),
            db_health_interval_seconds=reader.number("DCP_DB_HEALTH_INTERVAL_SECONDS", 2.0, minimum=0.1),
            db_health_timeout_seconds=reader.number("DCP_DB_HEALTH_TIMEOUT_SECONDS", 2.0, minimum=0.1),
            shutdown_grace_seconds=reader.number("DCP_SHUTDOWN_GRACE_SECONDS", 10.0),
            processes=_optional_count(reader, "DCP_PROCESSES", maximum=MAX_PROCESSES),
            max_body_bytes=reader.integer("DCP_MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
            registry_cache_seconds=reader.number("DCP_REGISTRY_CACHE_SECONDS", 1.0),
            export_poll_seconds=reader.number("DCP_EXPORT_POLL_SECONDS", 5.0),
            metrics_port=_optional_port(reader, "DCP_METRICS_PORT"),
            otlp_endpoint=reader.text("DCP_OTLP_ENDPOINT"),
            rate_limit_per_second=reader.number("DCP_RATE_LIMIT_PER_SECOND", 0.0),
            rate_limit_burst=reader.integer("DCP_RATE_LIMIT_BURST", 0, minimum=0),
            redis_url=reader.text("DCP_REDIS_URL"),
            log_format=reader.choice("DCP_LOG_FORMAT", ("text", "json"), "text"),
            log_level=reader.choice("DCP_LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
            oauth=oauth,
            s3=S3Settings(
                endpoint_url=reader.text("DCP_S3_ENDPOINT_URL"),
                region=reader.text("DCP_S3_REGION") or "us-east-1",
                bucket=reader.text("DCP_S3_BUCKET") or "optimizely-import",
                access_key_id=reader.text("DCP_S3_ACCESS_KEY_ID"),
                secret_access_key=reader.text("DCP_S3_SECRET_ACCESS_KEY"),
                addressing_style=reader.choice("DCP_S3_ADDRESSING_STYLE", ("auto", "path", "virtual"), "auto"),
                connect_timeout_seconds=reader.number("DCP_S3_CONNECT_TIMEOUT_SECONDS", 5.0, minimum=0.1),
                provision_keys=reader.choice("DCP_S3_PROVISION_KEYS", ("off", "on"), "off") == "on",
                embedded_port=reader.integer("DCP_S3_EMBEDDED_PORT", 9000, minimum=0, maximum=65535),
            ),
            imports=ImportSettings(
                poll_seconds=reader.number("DCP_IMPORT_POLL_SECONDS", 2.0),
                retry_seconds=reader.number("DCP_IMPORT_RETRY_SECONDS", 5.0, minimum=0.1),
                retry_max_seconds=reader.number("DCP_IMPORT_RETRY_MAX_SECONDS", 60.0, minimum=0.1),
                queue_url=reader.text("DCP_IMPORT_QUEUE_URL"),
                after=reader.choice("DCP_IMPORT_AFTER", ("archive", "delete", "keep"), "archive"),
                archive_prefix=reader.text("DCP_IMPORT_ARCHIVE_PREFIX") or "archive/",
                max_errors=reader.integer("DCP_IMPORT_MAX_ERRORS", 10_000, minimum=1),
                concurrency=reader.integer("DCP_IMPORT_CONCURRENCY", 4, minimum=1),
                max_file_bytes=reader.integer("DCP_IMPORT_MAX_FILE_BYTES", 5 * 1024**3, minimum=1),
                max_field_chars=reader.integer("DCP_IMPORT_MAX_FIELD_CHARS", 1024 * 1024, minimum=4096),
                max_inflated_bytes=reader.integer("DCP_IMPORT_MAX_INFLATED_BYTES", 20 * 1024**3, minimum=1024),
                max_rows=reader.integer("DCP_IMPORT_MAX_ROWS", 50_000_000, minimum=1),
                max_compression_ratio=reader.integer("DCP_IMPORT_MAX_COMPRESSION_RATIO", 100, minimum=2),
                ratio_check_bytes=reader.integer("DCP_IMPORT_RATIO_CHECK_BYTES", 16 * 1024**2, minimum=0),
                worker_processes=reader.choice("DCP_IMPORT_WORKER_PROCESS", ("on", "off"), "on") == "on",
                validate_workers=reader.integer("DCP_IMPORT_VALIDATE_WORKERS", 2, minimum=1, maximum=64),
                validate_seconds=reader.number("DCP_IMPORT_VALIDATE_SECONDS", 60.0, minimum=1.0),
                cancel_check_seconds=reader.number("DCP_IMPORT_CANCEL_CHECK_SECONDS", 1.0),
                worker_max_growth_bytes=reader.integer("DCP_IMPORT_WORKER_MAX_GROWTH_BYTES", 32 * 1024**2, minimum=0),
            ),
        )
        reader.raise_if_invalid()
        return settings


class _EnvReader:
    """Collects every bad variable so start-up names them all at once."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._problems: list[tuple[str, str]] = []

    def text(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def items(self, name: str) -> tuple[str, ...]:
        """A comma-separated list; blank items are dropped."""
        return tuple(item.strip() for item in (self.text(name) or "").split(",") if item.strip())

    def path(self, name: str) -> Path | None:
        value = self.text(name)
        return Path(value).expanduser() if value else None

    def integer(self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self._problems.append((name, f"must be an integer, got {value!r}"))
            return default
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            self._problems.append((name, f"must be between {minimum} and {maximum}, got {number}"))
            return default
        return number

    def number(self, name: str, default: float, *, minimum: float | None = None) -> float:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            self._problems.append((name, f"must be a number, got {value!r}"))
            return default
        if minimum is not None and not number >= minimum:
            self._problems.append((name, f"must be at least {minimum}, got {value}"))
            return default
        return number

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.text(name)
        if value is None:
            return default
        for option in options:
            if option.lower() == value.lower():
                return option
        self._problems.append((name, f"must be one of {', '.join(options)}, got {value!r}"))
        return default

    def raise_if_invalid(self) -> None:
        if self._problems:
            raise InvalidArgument("invalid configuration", violations=self._problems)


def _optional_count(reader: _EnvReader, name: str, *, maximum: int) -> int | None:
    if reader.text(name) is None:
        return None
    return reader.integer(name, 1, minimum=1, maximum=maximum)


def _optional_port(reader: _EnvReader, name: str) -> int | None:
    if reader.text(name) is None:
        return None
    return reader.integer(name, 0, minimum=0, maximum=65535)
