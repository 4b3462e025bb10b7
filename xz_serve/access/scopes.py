"""Which scope each /v1 route needs, and which routes are charged per text."""

from __future__ import annotations

ROUTE_SCOPES: tuple[tuple[str, str | None], ...] = (
    ("/v1/admin/", "admin"),
    ("/v1/embeddings", "embeddings"),
    ("/v1/chat", "chat"),
    ("/v1/sessions", "chat"),  # a chat's session state
    ("/v1/classifiers", "classifiers"),  # define, read, version, delete run-time classifiers
    ("/v1/classify", "nlu"),  # apply one: an encoder pass like /v1/intent
    ("/v1/analyze", "nlu"),
    ("/v1/intent", "nlu"),
    ("/v1/sentiment", "nlu"),
    ("/v1/", None),  # any other /v1 route (e.g. /v1/models): any valid key
)
"""Path prefix -> scope a key needs, first match wins. A new /v1 route needs a line here to be
scoped; without one it is open to every valid key (never to anonymous callers)."""

METERED = ("/v1/analyze", "/v1/intent", "/v1/sentiment", "/v1/embeddings", "/v1/classify")
"""Routes that charge their request together with their texts once they know the count (one
atomic step: a request refused for its texts uses no request budget). Every other /v1 route is
charged one request before it runs."""


def scope_for(path: str) -> str | None:
    """The scope ``path`` needs (None: any valid key)."""
    for prefix, scope in ROUTE_SCOPES:
        if path.startswith(prefix) or path == prefix.rstrip("/"):
            return scope
    return None


def is_metered(path: str) -> bool:
    """True for routes that charge their request with their texts (``AccessGate.charge_texts``)."""
    return path.startswith(METERED)
