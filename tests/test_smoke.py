import httpx


async def test_types(client: httpx.AsyncClient) -> None:
    response = await client.get("/types/")
    assert response.json() == [
        {"id": 1, "name": "clothes"},
        {"id": 2, "name": "electronics"},
        {"id": 3, "name": "misc"},
    ]


async def test_register_end_to_end(customer: httpx.AsyncClient, worker: object) -> None:
    import asyncio

    response = await customer.post(
        "/packages/", json={"name": "Jacket", "weight_kg": "1.25", "type_id": 1, "content_value_usd": "120"}
    )
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    for _ in range(200):
        status = (await customer.get(location)).json()
        if status["done"]:
            break
        await asyncio.sleep(0.1)
    assert status["state"] == "registered", status
    package = (await customer.get(f"/packages/{status['package_id']}/")).json()
    assert package["delivery_cost_rub"] == "142.71"
