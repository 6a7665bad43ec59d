"""Bearer JWT verification: HS256 with ENGAGEMENT_JWT_SECRET or RS256 with ENGAGEMENT_JWT_PUBLIC_KEY.

The algorithm is pinned by configuration, so ``alg: none`` and algorithm confusion are refused. A
verified token is cached (bounded, until it expires) so that signature checks are not the hot cost.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from api.errors import ApiError
from daemon.settings import Settings


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    scopes: frozenset[str]
    expires_at: float | None  # unix seconds


def unauthorized(code: str, message: str) -> ApiError:
    challenge = f'Bearer error="invalid_token", error_description="{message}"'
    return ApiError(401, code, message, {"WWW-Authenticate": challenge})


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        if settings.jwt_public_key:
            self._key: str | None = Path(settings.jwt_public_key).read_text()
            self._algorithms = ["RS256"]
        elif settings.jwt_secret:
            self._key = settings.jwt_secret
            self._algorithms = ["HS256"]
        else:
            self._key = None
            self._algorithms = []
        # The user id goes into Redis keys and Postgres text columns: a NUL (which Postgres refuses, so a
        # like from such a user would stop every flush) or a lone surrogate (which is not UTF-8) must not
        # get in, nor an id too long for a btree index entry.
        self._sub_max_len = settings.content_id_max_len
        self._sub_re = re.compile(f"[^\\x00-\\x1f\\x7f\\ud800-\\udfff]{{1,{self._sub_max_len}}}")
        self._cache: dict[str, Principal] = {}
        self._cache_size = settings.jwt_cache_size

    @property
    def configured(self) -> bool:
        return self._key is not None

    def authenticate(self, authorization: str | None) -> Principal | None:
        """None when no Authorization header was sent; raises 401 for anything present but invalid."""
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("invalid_token", "Authorization must be 'Bearer <token>'.")
        principal = self._cache.get(token)
        if principal is not None:
            if principal.expires_at is None or time.time() < principal.expires_at:
                return principal
            del self._cache[token]
            raise unauthorized("token_expired", "The token has expired.")
        principal = self._verify(token)
        cache = self._cache
        if len(cache) >= self._cache_size:
            del cache[next(iter(cache))]
        cache[token] = principal
        return principal

    def require(self, authorization: str | None, scope: str | None = None) -> Principal:
        principal = self.authenticate(authorization)
        if principal is None:
            raise unauthorized("missing_token", "This endpoint needs a Bearer token.")
        if scope is not None and scope not in principal.scopes:
            raise ApiError(403, "insufficient_scope", f"The token's scope does not include '{scope}'.")
        return principal

    def _verify(self, token: str) -> Principal:
        if self._key is None:
            raise unauthorized("auth_not_configured", "This server has no key to verify tokens with.")
        try:
            claims = jwt.decode(token, self._key, algorithms=self._algorithms, options={"require": ["sub"]})
        except jwt.ExpiredSignatureError:
            raise unauthorized("token_expired", "The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise unauthorized("token_not_yet_valid", "The token is not valid yet.") from None
        except jwt.MissingRequiredClaimError:
            raise unauthorized("invalid_token", "The token has no 'sub' claim.") from None
        except jwt.InvalidTokenError:
            raise unauthorized("invalid_token", "The token could not be verified.") from None
        sub = claims["sub"]
        if not isinstance(sub, str) or not self._sub_re.fullmatch(sub):
            raise unauthorized(
                "invalid_token",
                f"The token's 'sub' claim must be 1 to {self._sub_max_len} characters, none of them a "
                "control character.",
            )
        scope = claims.get("scope", "")
        scopes = frozenset(
            scope.split() if isinstance(scope, str) else scope if isinstance(scope, list) else ()
        )
        exp = claims.get("exp")
        return Principal(sub, frozenset(str(s) for s in scopes), float(exp) if exp is not None else None)
