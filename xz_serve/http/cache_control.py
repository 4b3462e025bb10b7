"""Cache-Control on requests: a client may refuse cached answers (no-cache) or their storage (no-store)."""

from __future__ import annotations


def cache_rules(header: str | None) -> tuple[bool, bool]:
    """``(read, write)`` for a request's Cache-Control value (RFC 9111 request directives).

    - ``no-cache`` or ``max-age=0``: do not answer from the cache; the fresh result may be stored.
    - ``no-store``: do not store this request's results; cached answers may still be served.
    Unknown directives are ignored, as the RFC asks; names are case-insensitive.
    """
    if not header:
        return True, True
    read, write = True, True
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache" or (name == "max-age" and value.strip().strip('"') == "0"):
            read = False
        elif name == "no-store":
            write = False
    return read, write
