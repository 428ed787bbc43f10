from tests.conftest import app_body, post_app


async def test_smoke(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    r = await post_app(h.client, app_body())
    assert r.status_code == 200, r.text
    print(r.json())
