"""``python -m gateway.token alice [--ttl 3600]``: print a bearer token for a user, for local use.

Signs with ``GATEWAY_JWT_SECRET`` from the environment, as the gateway verifies it::

    export GATEWAY_JWT_SECRET=$(openssl rand -hex 32)
    TOKEN=$(python -m gateway.token alice)
    curl -H "Authorization: Bearer $TOKEN" 'localhost:8080/api/pull?chat=alice:bob'
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gateway.auth import issue_token

DEFAULT_TTL = 3600


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.token",
                                     description="Print an HS256 bearer token for USER, signed with GATEWAY_JWT_SECRET.")
    parser.add_argument("user", help="the token's subject (sub): the name used as Sender and chat member")
    parser.add_argument("--ttl", type=int, default=DEFAULT_TTL, help=f"seconds until it expires (default {DEFAULT_TTL})")
    args = parser.parse_args(argv)
    if not args.user or ":" in args.user:
        parser.error("USER must be a non-empty name without ':' (a chat is two names around one ':')")
    if args.ttl <= 0:
        parser.error("--ttl must be positive")
    try:
        token = issue_token(os.environ.get("GATEWAY_JWT_SECRET", ""), args.user, args.ttl)
    except ValueError as exc:
        parser.error(str(exc))
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
