"""The request's ``RequestContext`` on the ASGI scope, and the FastAPI dependency that hands it to routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import Request
from starlette.types import Scope

from xz_serve.kernel.context import RequestContext


def context_of_scope(scope: Scope) -> RequestContext:
    """This request's context, created on first use; kept where ``request.state`` keeps its values."""
    state = scope.setdefault("state", {})
    ctx: RequestContext | None = state.get("xz")
    if ctx is None:
        ctx = state["xz"] = RequestContext()
    return ctx


async def get_context(request: Request) -> RequestContext:
    """FastAPI dependency for the request's context.

    ``async`` although it never awaits: FastAPI runs a plain ``def`` dependency in a thread pool,
    a hop that costs more than the whole cache hit it serves.
    """
    return context_of_scope(request.scope)


Ctx = Annotated[RequestContext, Depends(get_context)]
"""Route parameter type: ``ctx: Ctx`` injects the request's context."""
