"""The access layer in the real HTTP app (fake NLU client): 401/403/429, headers, admin routes, outages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.redis_server import RedisServer
from tests.unit.fakes import FakeNluClient
from xz_serve.access.gate import AccessGate, scope_for
from xz_serve.access.keys import mint
from xz_serve.http.app import create_api
from xz_serve.http.context import Ctx
from xz_serve.settings import XzSettings

Made = tuple[httpx.AsyncClient, FakeNluClient, AccessGate]
Make = Callable[..., Awaitable[Made]]


@pytest.fixture
async def make_app() -> AsyncIterator[Make]:
    """``await make(access={...}, store_url=...)``: an app, its fake model client and its gate."""
    opened: list[tuple[httpx.AsyncClient, AccessGate]] = []

    async def make(store_url: str | None = None, timeout_ms: float = 1000, **access: Any) -> Made:
        fake = FakeNluClient()
        settings = XzSettings(access=access, store={"redis_url": store_url, "timeout_ms": timeout_ms})
        app: FastAPI = create_api(fake, settings)

        @app.get("/v1/whoami")  # a route added after create_api: covered all the same
        async def whoami(ctx: Ctx) -> dict[str, Any]:
            return {"tenant": ctx.tenant, "key_id": ctx.key_id}

        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        opened.append((http, app.state.access))
        return http, fake, app.state.access

    yield make
    for http, gate in opened:
        await http.aclose()
        await gate.close()


async def add_key(gate: AccessGate, **kwargs: Any) -> tuple[dict[str, str], str]:
    """A key in the gate's store: ``(auth headers, key id)``."""
    plain, record = mint(kwargs.pop("name", "test"), **kwargs)
    await gate.store.put(record)
    return {"Authorization": f"Bearer {plain}"}, record.id


ANALYZE = {"text": "what is my balance"}


def test_route_scopes() -> None:
    assert scope_for("/v1/analyze") == scope_for("/v1/intent") == scope_for("/v1/sentiment") == "nlu"
    assert scope_for("/v1/embeddings") == "embeddings"
    assert scope_for("/v1/chat") == scope_for("/v1/sessions/1") == "chat"
    assert scope_for("/v1/admin/keys") == "admin"
    assert scope_for("/v1/models") is None


async def test_health_and_schema_stay_open(make_app: Make) -> None:
    http, _, _ = await make_app()
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.get("/readyz")).status_code == 200
    assert (await http.get("/openapi.json")).status_code == 200


async def test_refusals_are_json_with_stable_codes(make_app: Make) -> None:
    http, fake, gate = await make_app()
    headers, key_id = await add_key(gate)
    secret = headers["Authorization"].removeprefix("Bearer ")
    cases = [
        ({}, "missing_api_key"),
        ({"Authorization": ""}, "missing_api_key"),
        ({"Authorization": f"Basic {secret}"}, "invalid_api_key"),
        ({"Authorization": "Bearer nope"}, "invalid_api_key"),
        ({"Authorization": f"Bearer xz_{'0' * 16}_{'a' * 43}"}, "invalid_api_key"),  # unknown id
        ({"Authorization": f"Bearer xz_{key_id}_{'a' * 43}"}, "invalid_api_key"),  # wrong secret
    ]
    for sent, code in cases:
        response = await http.post("/v1/analyze", json=ANALYZE, headers=sent)
        assert response.status_code == 401, sent
        assert response.json() == {"error": {"code": code, "message": response.json()["error"]["message"]}}
        assert response.headers["www-authenticate"] == "Bearer"
    assert fake.calls == []  # nothing refused reached the model
    assert (await http.post("/v1/analyze", json=ANALYZE, headers=headers)).status_code == 200


async def test_revoked_and_expired_keys(make_app: Make) -> None:
    http, _, gate = await make_app(key_cache_ttl_s=0)
    headers, key_id = await add_key(gate, expires_at=time.time() + 0.3)
    assert (await http.post("/v1/analyze", json=ANALYZE, headers=headers)).status_code == 200
    await asyncio.sleep(0.35)
    expired = await http.post("/v1/analyze", json=ANALYZE, headers=headers)
    assert (expired.status_code, expired.json()["error"]["code"]) == (401, "expired_api_key")
    headers, key_id = await add_key(gate)
    await gate.store.revoke(key_id)
    revoked = await http.post("/v1/analyze", json=ANALYZE, headers=headers)
    assert (revoked.status_code, revoked.json()["error"]["code"]) == (401, "revoked_api_key")


async def test_scopes(make_app: Make) -> None:
    http, fake, gate = await make_app()
    headers, key_id = await add_key(gate, scopes=["embeddings"], tenant="acme")
    refused = await http.post("/v1/analyze", json=ANALYZE, headers=headers)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "insufficient_scope")
    assert "`nlu`" in refused.json()["error"]["message"]
    assert (await http.get("/v1/admin/keys", headers=headers)).status_code == 403
    assert (await http.post("/v1/embeddings", json={"input": "hi"}, headers=headers)).status_code == 200
    assert (await http.get("/v1/models", headers=headers)).status_code == 200  # any valid key
    assert (await http.get("/v1/whoami", headers=headers)).json() == {"tenant": "acme", "key_id": key_id}
    assert (await http.get("/v1/whoami")).status_code == 401
    assert fake.calls == [["hi"]]


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_requests_per_minute(make_app: Make, backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("store_server").url if backend == "redis" else None
    http, fake, gate = await make_app(url)
    headers, _ = await add_key(gate, requests_per_minute=3)
    oks = [await http.post("/v1/analyze", json={"text": f"text {i}"}, headers=headers) for i in range(3)]
    assert [r.headers["x-ratelimit-remaining"] for r in oks] == ["2", "1", "0"]
    assert {r.headers["x-ratelimit-limit"] for r in oks} == {"3"}
    assert all(0 < int(r.headers["x-ratelimit-reset"]) <= 60 for r in oks)
    refused = await http.post("/v1/analyze", json={"text": "text 3"}, headers=headers)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert 59 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining"] == "0" and refused.headers["x-ratelimit-limit"] == "3"
    assert len(fake.calls) == 3
    other, _ = await add_key(gate, requests_per_minute=3)  # limits are per key
    assert (await http.post("/v1/analyze", json=ANALYZE, headers=other)).status_code == 200


async def test_texts_per_minute(make_app: Make, store_server: RedisServer) -> None:
    http, fake, gate = await make_app(store_server.url)
    headers, _ = await add_key(gate, texts_per_minute=5, requests_per_minute=10)
    ok = await http.post("/v1/analyze", json={"texts": ["a b", "c d", "e f"]}, headers=headers)
    assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-texts"] == "2"
    assert ok.headers["x-ratelimit-remaining"] == "9"
    refused = await http.post("/v1/embeddings", json={"input": ["a", "b", "c"]}, headers=headers)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert "texts" in refused.json()["error"]["message"] and int(refused.headers["retry-after"]) >= 59
    assert refused.headers["x-ratelimit-limit-texts"] == "5"  # headers reach error responses too
    assert refused.headers["x-ratelimit-remaining-texts"] == "2"
    assert refused.headers["x-ratelimit-remaining"] == "9"  # refused for its texts: no request used
    too_big = await http.post("/v1/analyze", json={"texts": ["x"] * 6}, headers=headers)
    assert (too_big.status_code, too_big.json()["error"]["code"]) == (413, "texts_exceed_rate_limit")
    last = await http.post("/v1/sentiment", json={"texts": ["a", "b"]}, headers=headers)
    assert last.status_code == 200 and last.headers["x-ratelimit-remaining"] == "7"  # the 413 counted
    assert fake.calls == [["a b", "c d", "e f"], ["a", "b"]]


async def test_invalid_requests_count_against_the_key(make_app: Make) -> None:
    http, _, gate = await make_app()
    headers, _ = await add_key(gate, requests_per_minute=2)
    invalid = await http.post("/v1/analyze", json={"texts": []}, headers=headers)
    assert invalid.status_code == 400 and invalid.headers["x-ratelimit-remaining"] == "1"
    assert (await http.post("/v1/analyze", json=ANALYZE, headers=headers)).status_code == 200
    assert (await http.post("/v1/analyze", json={"text": "other"}, headers=headers)).status_code == 429
    assert (await http.get("/v1/models", headers=headers)).status_code == 429  # charged up front


async def test_limits_are_shared_by_replicas(make_app: Make, store_server: RedisServer) -> None:
    """Two apps (two replicas' worth of processes' state) on one store: one limit, not two."""
    a, _, gate_a = await make_app(store_server.url)
    b, _, _ = await make_app(store_server.url)
    headers, _ = await add_key(gate_a, requests_per_minute=10)
    codes = await asyncio.gather(*(
        (a if i % 2 else b).post("/v1/analyze", json=ANALYZE, headers=headers) for i in range(30)
    ))  # fmt: skip
    statuses = sorted(r.status_code for r in codes)
    assert statuses == [200] * 10 + [429] * 20, statuses


async def test_admin_routes(make_app: Make, store_server: RedisServer) -> None:
    http, _, gate = await make_app(store_server.url, key_cache_ttl_s=0.3)
    other, _, _ = await make_app(store_server.url, key_cache_ttl_s=0.3)  # another replica
    admin, _ = await add_key(gate, scopes=["admin"], name="root")
    created = await http.post(
        "/v1/admin/keys", headers=admin,
        json={"name": "svc", "tenant": "acme", "scopes": ["nlu"], "requests_per_minute": 50,
              "expires_at": "2099-01-01T00:00:00Z"},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["key"].startswith(f"xz_{body['id']}_") and body["status"] == "active"
    assert "secret_hash" not in body and body["tenant"] == "acme" and body["expires_at"] == 4070908800
    user = {"Authorization": f"Bearer {body['key']}"}
    assert (await http.post("/v1/analyze", json=ANALYZE, headers=user)).status_code == 200
    assert (await other.post("/v1/analyze", json=ANALYZE, headers=user)).status_code == 200
    listed = (await http.get("/v1/admin/keys", headers=admin)).json()["data"]
    assert {k["name"] for k in listed} == {"root", "svc"}
    assert all("key" not in k and "secret_hash" not in k for k in listed)
    assert body["key"] not in str(listed)
    assert (await http.post("/v1/analyze", json=ANALYZE, headers=user)).status_code == 200  # warm caches
    revoked = await http.delete(f"/v1/admin/keys/{body['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert (await http.post("/v1/analyze", json=ANALYZE, headers=user)).status_code == 401  # at once here
    await asyncio.sleep(0.35)  # key_cache_ttl_s: the bound for other replicas
    assert (await other.post("/v1/analyze", json=ANALYZE, headers=user)).status_code == 401
    missing = await http.delete(f"/v1/admin/keys/{'0' * 16}", headers=admin)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "key_not_found")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x", "scopes": ["root"]},
        {"name": "x", "scopes": []},
        {"name": "x", "requests_per_minute": 0},
        {"name": "x", "expires_at": "2001-01-01T00:00:00Z"},
        {"name": "x", "expires_at": "soon"},
        {"name": "x", "tenant": "a b"},
        {"name": "x", "secret": "mine"},
    ],
)
async def test_admin_validation(make_app: Make, body: dict[str, Any]) -> None:
    http, _, gate = await make_app()
    admin, _ = await add_key(gate, scopes=["admin"])
    response = await http.post("/v1/admin/keys", json=body, headers=admin)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"


async def test_admin_bad_id_is_400(make_app: Make) -> None:
    http, _, gate = await make_app()
    admin, _ = await add_key(gate, scopes=["admin"])
    assert (await http.delete("/v1/admin/keys/nope", headers=admin)).status_code == 400


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_store_outage(make_app: Make, store_server: RedisServer, mode: str) -> None:
    http, _, gate = await make_app(
        store_server.url, limits_fail_mode=mode, key_cache_ttl_s=0, key_stale_s=30, store_backoff_ms=300
    )
    headers, _ = await add_key(gate, requests_per_minute=2)
    unseen, _ = await add_key(gate)
    assert (await http.post("/v1/analyze", json=ANALYZE, headers=headers)).status_code == 200
    store_server.stop()
    during = await http.post("/v1/analyze", json=ANALYZE, headers=headers)  # key verified 0 s ago: stale ok
    if mode == "open":
        assert during.status_code == 200 and "x-ratelimit-limit" not in during.headers
    else:
        assert during.status_code == 503 and during.json()["error"]["code"] == "rate_limiter_unavailable"
        assert during.headers["retry-after"] == "1"
    never_seen = await http.post("/v1/analyze", json=ANALYZE, headers=unseen)
    assert (never_seen.status_code, never_seen.json()["error"]["code"]) == (503, "auth_unavailable")
    store_server.start()
    await asyncio.sleep(0.35)  # the guard's backoff window ends; the next call probes and succeeds
    assert (await http.post("/v1/analyze", json=ANALYZE, headers=headers)).status_code == 200
    after = await http.post("/v1/analyze", json=ANALYZE, headers=headers)
    assert after.status_code == 429  # counters survived (AOF): limits enforced again


async def test_store_outage_on_admin_routes(make_app: Make, store_server: RedisServer) -> None:
    http, _, gate = await make_app(store_server.url, store_backoff_ms=300)
    admin, _ = await add_key(gate, scopes=["admin"])
    assert (await http.get("/v1/admin/keys", headers=admin)).status_code == 200
    store_server.stop()
    response = await http.get("/v1/admin/keys", headers=admin)
    assert (response.status_code, response.json()["error"]["code"]) == (503, "store_unavailable")
    assert "retry-after" in response.headers


async def test_auth_off_is_open_and_loud(make_app: Make, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xz_serve.access.gate"):
        http, _, _ = await make_app(auth_enabled=False)
    assert any("AUTH IS OFF" in r.message for r in caplog.records)
    response = await http.post("/v1/analyze", json=ANALYZE)
    assert response.status_code == 200 and "x-ratelimit-limit" not in response.headers
    assert (await http.get("/v1/whoami")).json() == {"tenant": "default", "key_id": None}



async def test_a_websocket_under_v1_needs_a_key_too() -> None:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from xz_serve.access.spec import AccessSpec
    from xz_serve.http.middleware.access import AccessMiddleware

    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    gate = AccessGate(AccessSpec())
    app = AccessMiddleware(Starlette(routes=[WebSocketRoute("/v1/stream", stream)]), gate)
    plain, record = mint("ws")
    await gate.store.put(record)
    with TestClient(app) as client:
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/v1/stream"):
            pass
        assert refused.value.code == 1008
        with client.websocket_connect("/v1/stream", headers={"Authorization": f"Bearer {plain}"}) as ws:
            assert ws.receive_text() == "hello"
