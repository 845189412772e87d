from __future__ import annotations

import httpx

from tests.conftest import MakeAccount


async def test_service_table_attribute_walkthrough(http: httpx.AsyncClient, make_account: MakeAccount) -> None:
    account = await make_account()
    service = await http.post("/experiment/v1/dcp_services", json={"name": "My DCP Service"}, headers=account.headers)
    assert service.status_code == 201, service.text
    service_id = service.json()["id"]
    tables = (
        await http.get(f"/experiment/v1/dcp_services/{service_id}/dcp_datasources", headers=account.headers)
    ).json()
    assert [t["is_optimizely"] for t in tables] == [True]
    table = await http.post(
        f"/experiment/v1/dcp_services/{service_id}/dcp_datasources",
        json={"name": "CRM", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
        headers=account.headers,
    )
    assert table.status_code == 201, table.text
    assert table.json()["s3_path"] == f"dcp/{service_id}/{table.json()['id']}"


async def test_whoami_names_the_callers_own_account(http: httpx.AsyncClient, make_account: MakeAccount) -> None:
    acme = await make_account("Acme")
    globex = await make_account("Globex Corporation")
    for account, name in ((acme, "Acme"), (globex, "Globex Corporation")):
        for _ in range(2):  # the second answer comes from the schema service's memory of the name
            response = await http.get("/api/whoami", headers=account.headers)
            assert response.status_code == 200, response.text
            assert response.json() == {
                "accountId": str(account.id),
                "accountName": name,
                "scopes": ["read", "write"],
                "credentialKind": "classic",
            }
    assert (await http.get("/api/whoami")).status_code == 401
