"""Optional bearer-token authentication, and the rules of who may send and pull what.

With ``GATEWAY_AUTH`` on, every request but those to ``PUBLIC_PATHS`` carries
``Authorization: Bearer <JWT>``, a token signed with HS256 and the shared ``GATEWAY_JWT_SECRET``
that names its user in ``sub`` and expires (``exp``). Then:

- ``POST /api/send``: the body's ``Sender`` must be the token's ``sub``;
- ``GET /api/pull``: ``sub`` must be one of the chat's two members.

A missing, malformed, forged or expired token is a 401 (with a ``WWW-Authenticate: Bearer``
challenge); a valid token that asks for someone else's data is a 403. With auth off (the default)
nothing is checked, as before. Every rule is in this module: the gateway's dispatcher
(``gateway.app.Gateway``) calls ``TokenVerifier.authenticate`` for every request outside
``PUBLIC_PATHS`` before routing it or reading its body, and handlers call ``check_send`` /
``check_pull`` with the identity once the body is bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from gateway.errors import Forbidden, Unauthorized
from gateway.settings import check_jwt_secret

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("exp", "sub")
# Open with auth on: the health check and the API description.
PUBLIC_PATHS = frozenset({"/ping", "/openapi.json"})


@dataclass(frozen=True)
class Identity:
    """The authenticated user: the token's ``sub``."""

    subject: str


class TokenVerifier:
    """Checks HS256 tokens against one shared secret. Only HS256 is accepted (never ``none``)."""

    def __init__(self, secret: str, leeway: float = 0.0) -> None:
        check_jwt_secret(secret)
        self._key = secret.encode()
        self._leeway = leeway

    def verify(self, token: str) -> Identity:
        """The identity in a valid token.

        Raises:
            Unauthorized: bad signature, another algorithm, expired, not yet valid, no ``exp`` or
                ``sub``, or not a JWT at all.
        """
        try:
            claims = jwt.decode(token, self._key, algorithms=[ALGORITHM], leeway=self._leeway,
                                options={"require": list(REQUIRED_CLAIMS)})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("invalid token: sub must be a non-empty string")
        return Identity(subject)

    def authenticate(self, authorization: str | None) -> Identity:
        """The identity in an ``Authorization`` header value."""
        return self.verify(bearer_token(authorization))


def bearer_token(authorization: str | None) -> str:
    """The token of ``Bearer <token>`` (the scheme is case-insensitive, RFC 7235)."""
    if not authorization or not authorization.strip():
        raise Unauthorized("missing bearer token", error=None)
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    return token


def issue_token(secret: str, subject: str, ttl: float, now: float | None = None) -> str:
    """A token for ``subject`` valid for ``ttl`` seconds (``python -m gateway.token``, tests)."""
    check_jwt_secret(secret)
    issued = int(time.time() if now is None else now)
    claims = {"sub": subject, "iat": issued, "exp": issued + int(ttl)}
    return jwt.encode(claims, secret.encode(), algorithm=ALGORITHM)


def check_send(identity: Identity | None, sender: str) -> None:
    """With auth on (an identity), only the token's user may send, and only as themself."""
    if identity is not None and sender != identity.subject:
        raise Forbidden(f"forbidden: the sender must be the token's user ({identity.subject!r})")


def check_pull(identity: Identity | None, chat: str) -> None:
    """With auth on (an identity), only the chat's members may pull it.

    A chat that is not two non-empty members around one ``:`` is nobody's: it is refused here
    (403) rather than left for chatsvc's rules to reject, so that this check never depends on them.
    """
    if identity is not None and identity.subject not in _members(chat):
        raise Forbidden(f"forbidden: {identity.subject!r} is not a member of this chat")


def _members(chat: str) -> tuple[str, ...]:
    parts = chat.split(":")
    return tuple(parts) if len(parts) == 2 and all(parts) else ()
