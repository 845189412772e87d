"""Every reason the code can answer with is one of the documented `ErrorReason` values.

Integrations branch on the reason (the v1 `code` field), so a reason emitted
anywhere in the services or the gateway must be in the enum that documents it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from dcp.common.v1 import error_reason_pb2
from gateway.errors import _DEFAULT_REASON_BY_STATUS

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [*sorted((ROOT / "services").rglob("*.py")), *sorted((ROOT / "gateway").rglob("*.py"))]


def _text(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def emitted_reasons() -> dict[str, str]:
    """Each literal reason in the source tree, with where it is first found."""
    found: dict[str, str] = {}
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        gateway = path.is_relative_to(ROOT / "gateway")
        for node in ast.walk(tree):
            literals: list[tuple[str | None, int]] = []
            if isinstance(node, ast.ClassDef):
                # `reason = "..."` (or annotated) in the body of an error class.
                for statement in node.body:
                    if (
                        isinstance(statement, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == "reason" for t in statement.targets)
                    ) or (
                        isinstance(statement, ast.AnnAssign)
                        and isinstance(statement.target, ast.Name)
                        and statement.target.id == "reason"
                    ):
                        literals.append((_text(statement.value), statement.lineno))
            elif isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "reason" or (gateway and keyword.arg == "code"):
                        literals.append((_text(keyword.value), node.lineno))
            for literal, line in literals:
                if literal is not None:
                    found.setdefault(literal, f"{path.relative_to(ROOT)}:{line}")
    return found


def test_the_source_tree_emits_reasons_from_classes_calls_and_the_gateway() -> None:
    reasons = emitted_reasons()
    # The collector sees each kind of place a reason is written, so an empty or partial scan fails here.
    assert reasons["INVALID_FIELD"].startswith("services/_runtime/errors.py")  # class attribute
    assert reasons["UPLOAD_FINISHED"].startswith("services/imports/uploads.py")  # reason= keyword
    assert reasons["MALFORMED_REQUEST"].startswith("gateway/")  # the gateway's code= keyword


def test_every_emitted_reason_is_an_error_reason_value() -> None:
    documented = set(error_reason_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
    emitted = emitted_reasons()
    emitted.update(
        {reason: "gateway/errors.py (default by HTTP status)" for reason in _DEFAULT_REASON_BY_STATUS.values()}
    )
    missing = {reason: where for reason, where in emitted.items() if reason not in documented}
    assert not missing, f"reasons missing from protos/dcp/common/v1/error_reason.proto: {missing}"
