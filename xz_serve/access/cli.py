"""``xz-keys``: create, list and revoke API keys directly in the durable store Redis.

The store URL comes from ``--redis-url`` or ``XZ_STORE__REDIS_URL`` (the app reads the same env).
``create`` prints the plain key once; with ``--json`` every command prints one JSON document.
The URL may carry the store's password, so messages show it redacted (``redis://:***@host``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from xz_serve.access.keys import DEFAULT_SCOPES, SCOPES, ApiKey, RedisKeyStore, mint
from xz_serve.telemetry.redact import redact_url, scrub


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xz-keys", description=__doc__)
    parser.add_argument("--redis-url", default=os.environ.get("XZ_STORE__REDIS_URL"),
                        help="durable store Redis (default: $XZ_STORE__REDIS_URL; prefer the variable "
                             "to the flag for a URL with a password, which a flag shows in ps)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--tenant", default="default", help="cache and limit partition")
    create.add_argument("--scopes", default=",".join(DEFAULT_SCOPES),
                        help=f"comma-separated, of {','.join(SCOPES)} (default: %(default)s)")  # fmt: skip
    create.add_argument("--rpm", type=int, default=None, help="requests per minute (default: the app's)")
    create.add_argument("--tpm", type=int, default=None, help="texts per minute (default: the app's)")
    create.add_argument("--expires-in-days", type=float, default=None, help="default: never expires")
    commands.add_parser("list", help="list keys (never secrets)")
    revoke = commands.add_parser("revoke", help="revoke a key by id (or by the key itself)")
    revoke.add_argument("key_id")
    return parser


def _row(record: dict[str, Any]) -> str:
    def when(epoch: float | None) -> str:
        return "-" if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))

    limits = f"rpm={record['requests_per_minute'] or 'default'} tpm={record['texts_per_minute'] or 'default'}"
    scopes = ",".join(record["scopes"])
    head = f"{record['id']}  {record['status']:<7}  {record['name']}  tenant={record['tenant']}"
    return f"{head}  scopes={scopes}  {limits}  expires={when(record['expires_at'])}"


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    client = Redis.from_url(args.redis_url, socket_timeout=5, socket_connect_timeout=5)
    store = RedisKeyStore(client)
    try:
        if args.command == "create":
            expires = time.time() + args.expires_in_days * 86400 if args.expires_in_days else None
            plain, record = mint(
                args.name,
                tenant=args.tenant,
                scopes=[s.strip() for s in args.scopes.split(",") if s.strip()],
                requests_per_minute=args.rpm,
                texts_per_minute=args.tpm,
                expires_at=expires,
            )
            await store.put(record)
            return {**record.public(), "key": plain}
        if args.command == "list":
            return {"data": [r.public() for r in await store.all()]}
        key_id = args.key_id.split("_")[1] if args.key_id.startswith("xz_") else args.key_id
        revoked: ApiKey | None = await store.revoke(key_id)
        if revoked is None:
            raise LookupError(f"no key with id {key_id}")
        return revoked.public()
    finally:
        await client.aclose()


def _password(url: str) -> str | None:
    """The URL's password, to scrub from messages that might echo it (e.g. a parse error)."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xz-keys``; returns the exit status (0 ok, 1 refused, 2 usage)."""
    args = _parser().parse_args(argv)
    if not args.redis_url:
        print("xz-keys: no store: pass --redis-url or set XZ_STORE__REDIS_URL", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_run(args))
    except (ValueError, LookupError, OSError, RedisError) as exc:
        message = scrub(str(exc), _password(args.redis_url))
        if not isinstance(exc, ValueError | LookupError):
            message = f"the store at {redact_url(args.redis_url)} is unreachable: {message}"
        print(f"xz-keys: {message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    elif args.command == "create":
        print(result["key"])
        print(f"# {_row(result)}\n# store this key now: it is not shown again", file=sys.stderr)
    elif args.command == "list":
        for record in result["data"]:
            print(_row(record))
    else:
        print(f"revoked {_row(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
