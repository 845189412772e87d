"""The walls between rooms hold: each room reaches another only through its published client."""

from __future__ import annotations

from pathlib import Path

from tests.unit.import_graph import edges, room_cycles, violations

ROOT = Path(__file__).resolve().parents[2]


def test_rooms_reach_each_other_only_through_published_clients() -> None:
    found = violations(ROOT, list(edges(ROOT)))
    assert not found, "imports that break the rules of the rooms:\n" + "\n".join(found)


def test_no_room_depends_on_itself_through_others() -> None:
    assert room_cycles(ROOT, list(edges(ROOT))) == []


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in {p.parent for p in root.rglob("*.py")}:
        (package / "__init__.py").touch()
    return root


def test_each_rule_is_seen_broken(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "services/_runtime/db.py": "import asyncpg\nfrom services.domain import values\n",
            "services/domain/values.py": "import re\nimport grpc\nfrom services._runtime import db\n",
            "services/domain/rules.py": "from services.schema.client import X\n",
            "services/schema/client.py": "from dcp.schema.v1 import stubs\nfrom services.schema import repository\n",
            "services/schema/repository.py": "from services.profiles.profiles import Profiles\n",
            "services/profiles/profiles.py": "from services.schema.client import X\nfrom . import repository\n",
            "services/profiles/repository.py": "from services import platform\n",
            "services/platform.py": "from services.profiles.profiles import Profiles\nimport gateway.app\n",
            "gateway/app.py": "from services.schema.client import X\nfrom services.aliases.aliases import Y\n",
            "services/aliases/aliases.py": "import gateway.app\n",
        },
    )
    found = violations(root, list(edges(root)))
    expected = [
        "services._runtime.db:2 imports services.domain.values: _runtime imports nothing of ours but itself",
        "services.domain.rules:1 imports services.schema.client: the core imports no room, gateway or wiring",
        "services.domain.values:2 imports grpc: the core depends on nothing but the standard library and _runtime",
        "services.schema.client:2 imports services.schema.repository: a published client imports only the"
        " generated stubs, _runtime and the core",
        "services.schema.repository:1 imports services.profiles.profiles: another room is reached only through"
        " its published client module",
        "services.profiles.repository:1 imports services.platform: only wiring imports wiring",
        "services.aliases.aliases:1 imports gateway.app: only wiring starts the gateway",
        "gateway.app:2 imports services.aliases.aliases: another room is reached only through its published"
        " client module",
    ]
    assert sorted(found) == sorted(expected)
    assert room_cycles(root, list(edges(root))) == [["aliases", "gateway", "aliases"], ["schema", "profiles", "schema"]]
