"""The `dcp` command line: its arguments and help. What each command does is in `services.commands`.

This module imports little, so that `--help` and `--version` answer at once and
a Ctrl-C while the rest loads ends the command quietly.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

# Read by gRPC when it loads, so set before the imports below. Its fork handlers serve a child
# that goes on using gRPC after fork(); no process of ours does (children are exec'd or spawned),
# and with them on, every fork (stopping the embedded PostgreSQL, say) may log a line of its own.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from services._runtime import extras
from services._runtime.errors import DcpError
from services._runtime.ports import EMBEDDED_S3, GRPC, REST_GATEWAY, PortUnavailable, check_ports
from services._runtime.settings import DEFAULT_MAX_PROCESSES, MAX_PROCESSES, Settings

DISTRIBUTION = "open-dcp"
# What `dcp serve` runs, one per process (Kubernetes).
SERVICES = ("schema", "profiles", "aliases", "imports", "gateway")
# Rows `dcp secrets rotate` seals anew per transaction.
ROTATION_BATCH_SIZE = 500
DATA_DIR_DEFAULT = "~/.local/share/open-dcp"


def version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value}")
    return value


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _processes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_PROCESSES}, got {value}")
    return value


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str,
    example: str,
) -> argparse.ArgumentParser:
    """A subcommand whose help shows its description as written and ends with an example."""
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example:\n{example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _with_data_dir(command: argparse.ArgumentParser, *, admin: bool = True) -> argparse.ArgumentParser:
    if admin:
        text = (
            "the data dir of the `dcp up` whose database to use"
            f" (default: DCP_DATA_DIR, else {DATA_DIR_DEFAULT}); with DCP_DATABASE_URL set, that database is used"
        )
    else:
        text = (
            "where the embedded database, the first token and the secrets key are kept, made on the first start"
            f" (default: DCP_DATA_DIR, else {DATA_DIR_DEFAULT})"
        )
    command.add_argument("--data-dir", metavar="DIR", help=text)
    return command


ADMIN_NOTE = (
    "It finds the platform's data as `dcp up` does: --data-dir, else DCP_DATA_DIR, else\n"
    f"{DATA_DIR_DEFAULT}. Without DCP_DATABASE_URL it uses the embedded database there (joining\n"
    "a running `dcp up`, or starting it for the moment) and refuses a directory that holds none."
)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="dcp",
        description="Open DCP: self-hostable Dynamic Customer Profiles.",
        epilog="example:\n  dcp up\n  dcp tokens create --account 1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"dcp {version()}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = _command(
        commands,
        "up",
        "run every service and the gateway with one command",
        "Runs the whole platform: every service, the REST gateway and the console, with an\n"
        "embedded PostgreSQL in the data dir (unless DCP_DATABASE_URL is set) and an embedded\n"
        "S3 server (unless DCP_S3_ENDPOINT_URL is set). Each serving process runs all of them,\n"
        "one per core by default, sharing the same ports. The first start makes the data dir,\n"
        "an account 'default' and its first token. A port of 0 picks a free one; the start-up\n"
        "lines say which. Ctrl-C or SIGTERM stops it.",
        "  dcp up --data-dir /srv/dcp --http-port 8080",
    )
    _with_data_dir(up, admin=False)
    up.add_argument(
        "--http-port",
        type=_port,
        metavar="PORT",
        help="REST gateway and console port (default: DCP_HTTP_PORT, else 8080)",
    )
    up.add_argument("--grpc-port", type=_port, metavar="PORT", help="gRPC port (default: DCP_GRPC_PORT, or 50051)")
    up.add_argument(
        "--s3-port",
        type=_port,
        metavar="PORT",
        help="embedded S3 server port (default: DCP_S3_EMBEDDED_PORT, or 9000); unused with DCP_S3_ENDPOINT_URL",
    )
    up.add_argument(
        "--processes",
        type=_processes,
        metavar="N",
        help="serving processes sharing the ports (default: DCP_PROCESSES, else one per usable core but one,"
        f" from 1 to {DEFAULT_MAX_PROCESSES}); 1 serves everything in this process",
    )

    serve = _command(
        commands,
        "serve",
        "run one service alone (Kubernetes)",
        "Runs one service in this process, configured by the environment (DCP_DATABASE_URL,\n"
        "DCP_IDENTITY_KEY and the addresses of the services it calls); see the README's\n"
        "Configuration section and deploy/ for the Kubernetes manifests.",
        "  DCP_DATABASE_URL=postgresql://dcp@db/dcp DCP_IDENTITY_KEY=... dcp serve schema",
    )
    serve.add_argument("service", choices=SERVICES)

    _command(
        commands,
        "import-worker",
        "apply uploaded files; started by `dcp up` and `dcp serve imports` as their child process",
        "Applies uploaded files. `dcp up` and `dcp serve imports` start it as their child\n"
        "process and stop it with them; it is not meant to be run by hand.",
        "  dcp import-worker   # as `dcp up` starts it, with the settings it passes down",
    )

    replica = _command(
        commands,
        "replica",
        "serve beside `dcp up` on its ports; started by `dcp up` as its child process",
        "Serves every service and the REST gateway on the ports of the `dcp up` that\n"
        "started it, one more process answering requests. `dcp up` starts one per core\n"
        "beyond its own and stops them with it; it is not meant to be run by hand.",
        "  dcp replica --primary /tmp/dcp-xyz/primary.sock   # as `dcp up` starts it",
    )
    replica.add_argument("--primary", metavar="SOCKET", required=True, help="where the starting `dcp up` answers")

    migrate = _command(
        commands,
        "migrate",
        "apply database migrations",
        f"Applies the database migrations that are not applied yet (`dcp up` does so at each start).\n{ADMIN_NOTE}",
        "  DCP_DATABASE_URL=postgresql://dcp@db/dcp dcp migrate",
    )
    _with_data_dir(migrate)

    accounts_command = _command(
        commands,
        "accounts",
        "manage accounts",
        f"Creates and lists accounts.\n{ADMIN_NOTE}",
        "  dcp accounts create Acme --data-dir /srv/dcp",
    )
    accounts = accounts_command.add_subparsers(dest="action", required=True, metavar="ACTION")
    create_account = _command(
        accounts,
        "create",
        "create an account",
        f"Creates an account and prints its id.\n{ADMIN_NOTE}",
        "  dcp accounts create Acme",
    )
    _with_data_dir(create_account).add_argument("name", help="the account's name")
    _with_data_dir(
        _command(
            accounts,
            "list",
            "list accounts",
            f"Lists accounts: id, name, created.\n{ADMIN_NOTE}",
            "  dcp accounts list --data-dir /srv/dcp",
        )
    )

    tokens_command = _command(
        commands,
        "tokens",
        "manage API tokens",
        f"Issues, revokes and lists an account's API tokens.\n{ADMIN_NOTE}",
        "  dcp tokens create --account 1 --label 'nightly export'",
    )
    tokens = tokens_command.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = _with_data_dir(
        _command(
            tokens,
            "create",
            "issue a token; it is shown once",
            "Issues a token and prints it on standard output, the only time it is shown\n"
            f"(what it is, on standard error).\n{ADMIN_NOTE}",
            "  dcp tokens create --account 1 --label 'CRM sync' > crm.token",
        )
    )
    create.add_argument("--account", type=int, required=True, help="account id")
    create.add_argument("--kind", default="classic", choices=("classic", "personal"), help="default: classic")
    create.add_argument("--label", help="what the token is for")
    revoke = _with_data_dir(
        _command(
            tokens,
            "revoke",
            "revoke a token",
            f"Revokes a token at once; calls made with it are refused.\n{ADMIN_NOTE}",
            "  dcp tokens revoke 7",
        )
    )
    revoke.add_argument("token_id", type=int, help="the token's id (the number after its last ':')")
    listing = _with_data_dir(
        _command(
            tokens,
            "list",
            "list an account's tokens",
            f"Lists an account's tokens: id, kind, state, label.\n{ADMIN_NOTE}",
            "  dcp tokens list --account 1",
        )
    )
    listing.add_argument("--account", type=int, required=True, help="account id")

    sealing = _command(
        commands,
        "secrets",
        "the key that seals S3 secret keys in the database",
        "Makes and rotates the key (DCP_SECRETS_KEY, or `secrets.key` in the data dir of\n"
        "`dcp up`) that seals the DCP services' S3 secret keys in the database.",
        "  dcp secrets new-key > new.key && dcp secrets rotate < new.key",
    )
    sealing_actions = sealing.add_subparsers(dest="action", required=True, metavar="ACTION")
    _command(
        sealing_actions,
        "new-key",
        "print a fresh key for DCP_SECRETS_KEY",
        "Prints a fresh random key for DCP_SECRETS_KEY or `dcp secrets rotate`; it touches nothing.",
        "  dcp secrets new-key > new.key",
    )
    rotate = _with_data_dir(
        _command(
            sealing_actions,
            "rotate",
            "seal every stored S3 secret key with a new key, read from standard input",
            "Seals every stored S3 secret key anew with a new key, read from standard input (or\n"
            "--new-key-file); the current key is DCP_SECRETS_KEY, else the data dir's.\n"
            f"{ADMIN_NOTE}",
            "  dcp secrets new-key > new.key && dcp secrets rotate --data-dir /srv/dcp < new.key",
        )
    )
    rotate.add_argument("--new-key-file", metavar="FILE", help="read the new key from this file instead")
    rotate.add_argument(
        "--batch-size",
        type=_batch_size,
        default=ROTATION_BATCH_SIZE,
        help=f"rows per transaction (default {ROTATION_BATCH_SIZE})",
    )
    return top


# For each port `dcp up` listens on: its flag, its variable, and the variable of its interface.
PORT_CHOICES = {
    REST_GATEWAY: ("--http-port", "DCP_HTTP_PORT", "DCP_HTTP_HOST"),
    GRPC: ("--grpc-port", "DCP_GRPC_PORT", "DCP_GRPC_HOST"),
    EMBEDDED_S3: ("--s3-port", "DCP_S3_EMBEDDED_PORT", None),
}


def command_name(options: argparse.Namespace) -> str:
    """ "dcp up", "dcp tokens create": how messages name the command."""
    action = getattr(options, "action", None)
    return " ".join(["dcp", options.command, *([action] if action else [])])


def port_problem(name: str, error: PortUnavailable) -> str:
    """One line: which port, for what, and how to choose another (flags only where the command has them)."""
    flag, variable, host_variable = PORT_CHOICES.get(error.service, (None, None, None))
    ways = " or ".join(way for way in (flag if name == "dcp up" else None, variable) if way)
    choose = f"; choose another with {ways} (0 picks a free one)" if ways else ""
    if error.in_use:
        return f"{name}: port {error.port} ({error.service}) is in use by another program{choose}"
    interface = f", or another interface with {host_variable}" if host_variable else ""
    return f"{name}: cannot listen on {error.host}:{error.port} ({error.service}): {error.reason}{choose}{interface}"


def dcp_error(error: DcpError) -> str:
    details = "; ".join(f"{field}: {reason}" for field, reason in error.violations)
    return f"dcp: {error.message}{' (' + details + ')' if details else ''}"


def fail(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def settings_for(options: argparse.Namespace) -> Settings:
    """The environment's settings, with the command's flags over them."""
    settings = Settings.from_env()
    overrides: dict[str, Any] = {}
    if getattr(options, "data_dir", None):
        overrides["data_dir"] = Path(options.data_dir).expanduser()
    if getattr(options, "http_port", None) is not None:
        overrides["http_port"] = options.http_port
    if getattr(options, "grpc_port", None) is not None:
        overrides["grpc_port"] = options.grpc_port
    if getattr(options, "processes", None) is not None:
        overrides["processes"] = options.processes
    if getattr(options, "s3_port", None) is not None:
        overrides["s3"] = replace(settings.s3, embedded_port=options.s3_port)
    return settings.with_overrides(**overrides)


def main(argv: list[str] | None = None) -> None:
    options = parser().parse_args(argv)
    try:
        sys.exit(_main(options))
    except KeyboardInterrupt:
        # Ctrl-C before anything started (later ones are the command's to handle): nothing to stop.
        if options.command == "up":
            print("stopping...", flush=True)
        sys.exit(130)


def _main(options: argparse.Namespace) -> int:
    try:
        settings = settings_for(options)
        if options.command == "up":
            # Before the rest loads, so that a taken port or a missing extra is told at once.
            check_ports(settings)
            extras.require_embedded_stores(settings)
    except PortUnavailable as error:
        fail(port_problem(command_name(options), error))
        return 1
    except DcpError as error:
        fail(dcp_error(error))
        return 1
    from services import commands  # noqa: PLC0415 - the heavy part, loaded once the arguments are good

    return commands.run(options, settings)


if __name__ == "__main__":
    main()
