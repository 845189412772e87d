"""A DCP service with typed attributes, customers linked to Optimizely users, and a linked project,
set up through REST for the audience and export screens."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from tests.console.harness import V1, Platform, json_of

SEGMENTS = ("gold", "silver", "bronze")
ATTRIBUTES: tuple[dict[str, Any], ...] = (
    {"name": "orders", "datatype": "long"},
    {"name": "spend", "datatype": "double"},
    {"name": "vip", "datatype": "bool"},
    {"name": "segment", "datatype": "string"},
    {"name": "signup", "datatype": "datetime", "format": "yyyy-mm-dd"},
    {"name": "last_seen", "datatype": "datetime", "format": "yyyy-mm-ddThh:mm:ssZ"},
    {"name": "first_order", "datatype": "datetime", "format": "epoch"},
)


def customer_values(index: int) -> dict[str, Any]:
    """Customer `index`'s values: orders = index, every third one a gold VIP."""
    return {
        "orders": index,
        "spend": index * 1.5,
        "vip": index % 3 == 0,
        "segment": SEGMENTS[index % 3],
        "signup": f"2024-01-{index % 28 + 1:02d}",
        "last_seen": f"2024-03-{index % 28 + 1:02d}T12:00:00Z",
        "first_order": 1_700_000_000_000 + index * 86_400_000,
    }


@dataclass
class Scene:
    token: str
    rest: httpx.Client
    service_id: int
    optimizely_table_id: int
    table_id: int
    project_id: int
    attributes: dict[str, int] = field(default_factory=dict)
    customers: int = 0

    def leaf(self, attribute: str, match_type: str, value: Any = None) -> dict[str, Any]:
        leaf: dict[str, Any] = {
            "type": "dcp",
            "dcp_datasource_id": self.table_id,
            "dcp_attribute_id": self.attributes[attribute],
            "match_type": match_type,
        }
        if match_type != "exists":
            leaf["value"] = value
        return leaf

    def count(self, conditions: list[Any]) -> int:
        answer = self.rest.post(f"{V1}/projects/{self.project_id}/audiences/count", json={"conditions": conditions})
        return int(json_of(answer)["count"])

    def audience(self, name: str, conditions: list[Any]) -> dict[str, Any]:
        answer = self.rest.post(
            f"{V1}/projects/{self.project_id}/audiences", json={"name": name, "conditions": conditions}
        )
        return dict(json_of(answer, 201))

    def members(self, audience_id: int) -> set[str]:
        users: set[str] = set()
        path: str | None = f"{V1}/audiences/{audience_id}/members?per_page=1000"
        while path:
            answer = self.rest.get(path)
            users.update(member["optimizely_user_id"] for member in json_of(answer))
            path = answer.links.get("next", {}).get("url")
        return users


def user_of(index: int) -> str:
    return f"oeu-{index:03d}"


def build_scene(platform: Platform, account: str, *, customers: int = 12, project: bool = True) -> Scene:
    """A new account's DCP service "Shop" with table "Orders", `customers` customers each linked to
    Optimizely user `user_of(i)`, and (unless told not to) project "Web" linked to the service."""
    token = platform.new_account(account)
    rest = platform.rest(token)
    service = json_of(rest.post(f"{V1}/dcp_services", json={"name": "Shop"}), 201)
    tables = json_of(rest.get(f"{V1}/dcp_services/{service['id']}/dcp_datasources"))
    optimizely = next(t for t in tables if t["is_optimizely"])
    orders = json_of(
        rest.post(
            f"{V1}/dcp_services/{service['id']}/dcp_datasources",
            json={"name": "Orders", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
        ),
        201,
    )
    attributes = {}
    for spec in ATTRIBUTES:
        created = json_of(rest.post(f"{V1}/dcp_datasources/{orders['id']}/dcp_datasource_attributes", json=spec), 201)
        attributes[spec["name"]] = created["id"]
    for index in range(customers):
        customer = f"crm-{index:03d}"
        json_of(
            rest.post(
                f"/api/customer_profile/{service['id']}/{orders['id']}/{customer}",
                json={"data": customer_values(index)},
            ),
            201,
        )
        alias = rest.post(
            f"/api/alias/{service['id']}/{optimizely['id']}/{user_of(index)}",
            json={"data": {str(orders["id"]): customer}},
        )
        assert alias.status_code in (200, 201), alias.text
    project_id = 0
    if project:
        created = json_of(
            rest.post(f"{V1}/projects", json={"project_name": "Web", "dcp_service_id": service["id"]}), 201
        )
        project_id = created["id"]
    return Scene(
        token=token,
        rest=rest,
        service_id=service["id"],
        optimizely_table_id=optimizely["id"],
        table_id=orders["id"],
        project_id=project_id,
        attributes=attributes,
        customers=customers,
    )


class Scenes:
    """Makes scenes for one test, and closes their REST clients when it ends."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.made: list[Scene] = []

    def __call__(self, account: str, *, customers: int = 12, project: bool = True) -> Scene:
        scene = build_scene(self.platform, account, customers=customers, project=project)
        self.made.append(scene)
        return scene

    def __enter__(self) -> Scenes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for scene in self.made:
            scene.rest.close()
