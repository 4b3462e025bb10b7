"""Admin routes for API keys: ``POST/GET /v1/admin/keys``, ``DELETE /v1/admin/keys/{id}``.

The access middleware lets only keys with the ``admin`` scope reach them. The plain key is in the
answer to POST and nowhere else, ever.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from xz_serve.access.gate import STORE_DOWN, AccessGate
from xz_serve.access.keys import ApiKey, mint
from xz_serve.http.schemas import KeyCreate, KeyCreated, KeyInfo, KeyList
from xz_serve.kernel.errors import InvalidInputError, NotFoundError, NotReadyError

_ID = Path(pattern=r"^[0-9a-f]{16}$", description="The key id (the hex part after `xz_`).")


def admin_router(gate: AccessGate) -> APIRouter:
    """Key management on ``gate``'s store."""
    router = APIRouter(prefix="/v1/admin/keys", tags=["admin"])

    async def stored(op: Any, what: str) -> Any:
        result = await gate.stored(op, what)
        if result is STORE_DOWN:
            raise NotReadyError("the key store is unreachable; retry shortly", code="store_unavailable",
                                retry_after_s=gate.spec.store_backoff_ms / 1000)  # fmt: skip
        return result

    @router.post("", status_code=201, response_model=KeyCreated)
    async def create_key(body: KeyCreate) -> JSONResponse:
        """Create a key; the answer holds the plain key, shown this once."""
        expires = body.expires_at
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        try:
            plain, record = mint(
                body.name,
                tenant=body.tenant,
                scopes=body.scopes,
                requests_per_minute=body.requests_per_minute,
                texts_per_minute=body.texts_per_minute,
                expires_at=expires.timestamp() if expires else None,
            )
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        await stored(lambda: gate.store.put(record), "key_create")
        return JSONResponse({**record.public(), "key": plain}, 201)

    @router.get("", response_model=KeyList)
    async def list_keys() -> dict[str, Any]:
        """Every key, revoked and expired ones included; never a secret or its hash."""
        records: list[ApiKey] = await stored(gate.store.all, "key_list")
        return {"data": [r.public() for r in records]}

    @router.delete("/{key_id}", response_model=KeyInfo, responses={404: {"description": "No such key"}})
    async def revoke_key(key_id: str = _ID) -> dict[str, Any]:
        """Revoke a key: refused on this replica at once, on others within access.key_cache_ttl_s."""
        record: ApiKey | None = await stored(lambda: gate.store.revoke(key_id), "key_revoke")
        if record is None:
            raise NotFoundError(f"no key with id {key_id}", code="key_not_found")
        gate.forget(key_id)
        return record.public()

    return router
