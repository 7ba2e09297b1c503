"""Optional OAuth2 bearer check for the SBI (TS 33.501 / TS 29.510 access tokens).

Two ways, either or both: a list of opaque tokens the operator configured, or JWTs signed with HS256 by a shared
key (the NRF's token signing key), whose `exp` must lie ahead and whose `scope` must name the service.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable

SCOPE = "nchf-convergedcharging"


class Unauthorized(Exception):
    """No valid token; the message says why (it goes into the 401 ProblemDetails, never the token itself)."""


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def make_jwt(claims: dict[str, object], key: bytes) -> str:
    """HS256 JWT (for tests and tools that play the NRF)."""
    header = _b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64encode(json.dumps(claims).encode())
    signature = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64encode(signature)}"


class BearerAuth:
    def __init__(
        self, tokens: list[str] | None = None, jwt_key: bytes | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.tokens = {t.encode() for t in tokens or []}
        self.jwt_key = jwt_key
        self.clock = clock

    def check(self, authorization: str | None) -> None:
        if not authorization:
            raise Unauthorized("an OAuth2 bearer token is required")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        raw = token.strip().encode()
        if any(hmac.compare_digest(raw, t) for t in self.tokens):
            return
        if self.jwt_key is None or raw.count(b".") != 2:
            raise Unauthorized("the bearer token is not valid")
        self._check_jwt(token.strip())

    def _check_jwt(self, token: str) -> None:
        assert self.jwt_key is not None
        header_part, payload_part, signature_part = token.split(".")
        try:
            header = json.loads(_b64decode(header_part))
            claims = json.loads(_b64decode(payload_part))
            signature = _b64decode(signature_part)
        except (ValueError, binascii.Error) as exc:
            raise Unauthorized("the bearer token is not a well-formed JWT") from exc
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            raise Unauthorized("the bearer token must be signed with HS256")
        expected = hmac.new(self.jwt_key, f"{header_part}.{payload_part}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(signature, expected):
            raise Unauthorized("the bearer token signature does not verify")
        if not isinstance(claims, dict):
            raise Unauthorized("the bearer token claims must be an object")
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float) or exp <= self.clock():
            raise Unauthorized("the bearer token has expired or has no exp claim")
        scope = claims.get("scope")
        if not isinstance(scope, str) or SCOPE not in scope.split():
            raise Unauthorized(f"the bearer token's scope must include {SCOPE}")
