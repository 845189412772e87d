"""Schemathesis over the served OpenAPI document: seeding two accounts, its configuration, and its run."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

V1 = "/experiment/v1"
ST = str(Path(sys.executable).parent / "st")

# A header only the test's own credentials carry, so that the record of a run tells whose call each was;
# schemathesis leaves it out with the token when it probes without credentials.
CALLER_HEADER = "X-Test-Caller"

# The resource a numeric path parameter names; ids are unique across accounts per resource.
RESOURCE_OF = {
    "service_id": "service",
    "table_id": "table",
    "optimizely_table_id": "table",
    "attribute_id": "attribute",
    "project_id": "project",
    "audience_id": "audience",
    "export_id": "export",
    "upload_id": "upload",
}


# Checks of `--checks all` that do not apply to the v1 surface, each with the reason.
EXCLUDED_CHECKS = (
    # v1 answers 400 to a well-formed request that breaks a rule about stored state: a change to an archived
    # object, archiving the Optimizely table, a second DCP service, conditions or values naming attributes
    # the table does not have. Which request breaks such a rule depends on what the run did before, not on
    # the request, so no document can tell them from accepted ones; a schema-valid 400 is no fault here.
    "positive_data_acceptance",
)
# (selector, value, check, why): checks left out for some operations only.
OPERATION_EXCLUDED_CHECKS = (
    (
        "include-operation-id",
        "validateUpload",
        "negative_data_rejection",
        "Any bytes are a CSV file to check: a negated text/csv body (an array, null) is sent as its text, "
        "a valid file body; schemathesis knows that only of text/plain and application/octet-stream.",
    ),
    (
        "include-path-regex",
        "^/experiment/v1/",
        "use_after_free",
        "A DELETE under /experiment/v1 archives (v1): the object and what lies under it stay readable, marked "
        "archived. The DELETEs under /api (profiles, aliases) remove what they name, and keep this check.",
    ),
)

STATEFUL_EXAMPLES = 150

ATTRIBUTES: list[dict[str, Any]] = [
    {"name": "ltv", "datatype": "long", "is_value_public": True},
    {"name": "score", "datatype": "double"},
    {"name": "vip", "datatype": "bool", "is_value_public": True},
    {"name": "category", "datatype": "string", "description": "what they buy"},
    {"name": "day", "datatype": "datetime", "format": "yyyy-mm-dd"},
]


@dataclass
class Seeded:
    """One account's token and the ids of what was made for it, by path parameter name."""

    name: str
    token: str
    ids: dict[str, list[int | str]] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)
    """Values only this account's answers may hold: its S3 secret keys and a stored profile value."""

    def add(self, parameter: str, value: int | str) -> None:
        self.ids.setdefault(parameter, []).append(value)

    def owned(self, parameter: str) -> set[int]:
        """This account's ids of the resource a path parameter names."""
        resource = RESOURCE_OF.get(parameter)
        return {
            int(value)
            for name, values in self.ids.items()
            if resource is not None and RESOURCE_OF.get(name) == resource
            for value in values
        }


def _created(response: httpx.Response, status: int = 201) -> Any:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json()


def seed(http: httpx.Client, name: str, token: str, tag: str) -> Seeded:
    """A service, a table with attributes, profiles, an alias, an audience, exports and a processed upload."""
    seeded = Seeded(name=name, token=token)
    headers = {"Token": token}

    def post(path: str, body: Any, status: int = 201) -> Any:
        return _created(http.post(path, json=body, headers=headers), status)

    made = post(f"{V1}/dcp_services", {"name": f"{tag} shop"})
    service = made["id"]
    seeded.add("service_id", service)
    seeded.secrets.add(made["aws_secret_key"])
    project = post(f"{V1}/projects", {"project_name": f"{tag} web", "dcp_service_id": service})["id"]
    seeded.add("project_id", project)
    [optimizely] = _created(http.get(f"{V1}/dcp_services/{service}/dcp_datasources", headers=headers), 200)
    crm = post(
        f"{V1}/dcp_services/{service}/dcp_datasources",
        {"name": f"{tag} crm", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
    )
    seeded.secrets.add(crm["aws_secret_key"])
    seeded.add("optimizely_table_id", optimizely["id"])
    for table in (crm["id"], optimizely["id"]):
        seeded.add("table_id", table)
    attributes: dict[tuple[int, str], int] = {}
    for table in (crm["id"], optimizely["id"]):
        for attribute in ATTRIBUTES:
            created = post(f"{V1}/dcp_datasources/{table}/dcp_datasource_attributes", attribute)
            attributes[(table, attribute["name"])] = created["id"]
            seeded.add("attribute_id", created["id"])

    customer, user = f"{tag}-customer", f"{tag}-visitor"
    seeded.add("customer_id", customer)
    seeded.add("user_id", user)
    seeded.add("optimizely_user_id", user)
    category = f"{tag}-{secrets.token_hex(8)}"
    seeded.secrets.add(category)
    data = {"ltv": 120, "score": 0.5, "vip": True, "category": category, "day": "2024-05-01"}
    post(f"/api/customer_profile/{service}/{crm['id']}/{customer}", {"data": data})
    post(f"/api/customer_profile/{service}/{optimizely['id']}/{user}", {"data": {"vip": True}})
    post(f"/api/alias/{service}/{optimizely['id']}/{user}", {"data": {str(crm["id"]): customer}})

    conditions = [
        "and",
        {
            "type": "dcp",
            "dcp_datasource_id": crm["id"],
            "dcp_attribute_id": attributes[(crm["id"], "ltv")],
            "match_type": "gt",
            "value": 100,
        },
    ]
    audience = post(f"{V1}/projects/{project}/audiences", {"name": f"{tag} big spenders", "conditions": conditions})
    seeded.add("audience_id", audience["id"])
    seeded.add("export_id", post(f"{V1}/dcp_datasources/{crm['id']}/exports", {"format": "csv"})["id"])
    seeded.add("export_id", post(f"{V1}/audiences/{audience['id']}/exports", {})["id"])

    target = post(f"{V1}/dcp_datasources/{crm['id']}/uploads", {"file_name": f"{tag}.csv"})
    stored = httpx.request(
        target["method"], target["url"], content=f"customerId,ltv\n{customer},7\nbad,x\n".encode(), timeout=30
    )
    assert stored.status_code == 200, stored.text
    seeded.add("upload_id", _finished_upload(http, headers, crm["id"]))
    return seeded


def _finished_upload(http: httpx.Client, headers: dict[str, str], table: int, within: float = 60) -> int:
    deadline = time.monotonic() + within
    while True:
        uploads = _created(http.get(f"{V1}/dcp_datasources/{table}/uploads", headers=headers), 200)
        if uploads and uploads[0]["status"] not in ("pending", "processing"):
            return int(uploads[0]["id"])
        assert time.monotonic() < deadline, f"the seeded upload was not applied: {uploads}"
        time.sleep(0.1)


def _toml(value: Any) -> str:
    # JSON strings, numbers, booleans and arrays of them are valid TOML values.
    return json.dumps(value)


def write_config(directory: Path, owner: Seeded, peer: Seeded) -> Path:
    """schemathesis.toml and its WFC auth file: `owner` makes every call, `peer` replays the owner's reads.

    Path parameters are drawn from both accounts' real ids most of the time, so that generated calls reach
    real objects of the caller and the other account's objects as well; the rest are generated.
    """
    directory.mkdir(parents=True, exist_ok=True)
    auth = directory / "auth.json"
    auth.write_text(
        json.dumps(
            {
                "auth": [
                    {
                        "name": account.name,
                        "fixedHeaders": [
                            {"name": "Token", "value": account.token},
                            {"name": CALLER_HEADER, "value": account.name},
                        ],
                    }
                    for account in (owner, peer)
                ]
            }
        )
    )
    lines = [
        "[auth.wfc]",
        f"path = {_toml(str(auth))}",
        f"user = {_toml(owner.name)}",
        f"peers = {_toml([owner.name, peer.name])}",
        "",
        # Every run starts from nothing it learnt before, so that the seed alone decides what it sends.
        "[cache]",
        "enabled = false",
        "",
    ]
    # Chains of calls along the document's links (create, then read, change, archive) are cheap and reach
    # what single calls cannot, so stateful testing gets more scenarios than each operation gets cases.
    lines += ["[phases.stateful.generation]", f"max-examples = {STATEFUL_EXAMPLES}", ""]
    # Every check runs, except those that do not fit this API (in the file, where operations may narrow them).
    lines += ["[checks]", "enabled = true"]
    lines += [f"{check}.enabled = false" for check in EXCLUDED_CHECKS]
    lines.append("")
    for selector, value, check, reason in OPERATION_EXCLUDED_CHECKS:
        lines += [f"# {reason}", "[[operations]]", f"{selector} = {_toml(value)}"]
        lines += [f"checks.{check}.enabled = false", ""]
    parameters = sorted(set(owner.ids) | set(peer.ids))
    for name in parameters:
        lines += [f"[dictionaries.{name}]", f"values = {_toml(owner.ids.get(name, []) + peer.ids.get(name, []))}", ""]
    lines.append("[parameters]")
    lines += [f'"path.{name}" = {{ dictionary = {_toml(name)}, probability = 0.75 }}' for name in parameters]
    config = directory / "schemathesis.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


@dataclass
class Run:
    """One schemathesis run: its command, exit code, output, and every exchange it recorded."""

    command: list[str]
    config: str = field(repr=False)
    returncode: int
    output: str = field(repr=False)
    seconds: float
    exchanges: list[dict[str, Any]] = field(repr=False)

    def failure_text(self) -> str:
        return f"$ {' '.join(self.command)}\n{self.config}\nexit code {self.returncode}\n{self.output}"


def run_schemathesis(
    base_url: str, directory: Path, config: Path, *, seed_value: int, max_examples: int, timeout: float
) -> Run:
    report = directory / "report"
    command = [
        ST,
        "--config-file",
        str(config),
        "run",
        f"{base_url}/openapi.json",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed_value),
        # An answer slower than this fails the run.
        "--request-timeout",
        "10",
        # One worker, so that the seed alone decides which requests go out in which order.
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "har",
        "--report-dir",
        str(report),
    ]
    started = time.monotonic()
    # Its working directory is the run's own, so that nothing it writes lands in the repository.
    finished = subprocess.run(
        command, cwd=directory, capture_output=True, text=True, timeout=timeout, check=False, env=_environment()
    )
    seconds = time.monotonic() - started
    (directory / "output.txt").write_text(finished.stdout + finished.stderr)
    exchanges: list[dict[str, Any]] = []
    for har in sorted(report.glob("*.json")):
        exchanges.extend(json.loads(har.read_text())["log"]["entries"])
    return Run(command, config.read_text(), finished.returncode, finished.stdout + finished.stderr, seconds, exchanges)


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DCP_", "SCHEMATHESIS_"))}


@dataclass(frozen=True)
class Template:
    """A documented operation's method and path, to tell which operation a recorded call was."""

    method: str
    path: str
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, method: str, path: str) -> Template:
        parts = []
        for segment in path.strip("/").split("/"):
            name = re.fullmatch(r"{(\w+)}", segment)
            parts.append(f"(?P<{name.group(1)}>[^/]+)" if name else re.escape(segment))
        return cls(method.upper(), path, re.compile("/" + "/".join(parts)))


def templates(document: dict[str, Any]) -> list[Template]:
    return [
        Template.of(method, path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("get", "put", "post", "delete", "patch")
    ]


def caller(exchange: dict[str, Any]) -> str | None:
    for header in exchange["request"]["headers"]:
        if header["name"].lower() == CALLER_HEADER.lower():
            return str(header["value"])
    return None


def operation_of(exchange: dict[str, Any], known: list[Template]) -> tuple[Template, dict[str, str]] | None:
    request = exchange["request"]
    path = httpx.URL(request["url"]).raw_path.split(b"?")[0].decode("ascii")
    for template in known:
        matched = template.pattern.fullmatch(path) if template.method == request["method"] else None
        if matched:
            return template, matched.groupdict()
    return None


@dataclass
class CrossAccount:
    """What one account's calls did with the other account's objects."""

    calls: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def cross_account(run: Run, document: dict[str, Any], caller_name: str, other: Seeded) -> CrossAccount:
    """Every call `caller_name` made that names one of `other`'s objects must fail, and no answer to
    `caller_name` may hold `other`'s secrets."""
    known = templates(document)
    found = CrossAccount()
    for exchange in run.exchanges:
        if caller(exchange) != caller_name:
            continue
        request, response = exchange["request"], exchange["response"]
        shown = f"{request['method']} {request['url']} -> {response['status']}"
        text = response.get("content", {}).get("text") or ""
        leaked = [secret for secret in other.secrets if secret in text]
        if leaked:
            found.problems.append(f"{shown}: the answer holds {other.name}'s {leaked}")
        matched = operation_of(exchange, known)
        if matched is None:
            continue
        _, values = matched
        foreign = [name for name, value in values.items() if value.isdigit() and int(value) in other.owned(name)]
        if not foreign:
            continue
        found.calls += 1
        status = int(response["status"])
        found.refused[status] = found.refused.get(status, 0) + 1
        if 200 <= status < 300:
            found.problems.append(f"{shown}: {caller_name} reached {other.name}'s {', '.join(foreign)}")
    return found
