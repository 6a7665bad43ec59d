"""Idempotency-Key (seed 001: every mutating endpoint) for requests Redis does not otherwise see.

Likes, subscriptions and shares check their key inside the script that applies them. A view is only
added to the api's in-process buffer, so a view request carrying an Idempotency-Key first *claims* the
key in Redis (``lua/claim_idempotency.lua``, one round trip, auto-pipelined), then is buffered:

- ``claimed``: the request goes on; if the buffer then refuses it (503 buffer_full), the claim is
  released so that the client's retry is applied;
- ``replayed``: the same request (same fingerprint: a hash of its body) was accepted before: its answer
  again, nothing applied;
- ``conflict``: 422 ``idempotency_key_reused``.

Requests without the header skip all of this: the hot path costs nothing more. With Redis unreachable a
keyed request cannot be checked and answers 503 ``idempotency_unavailable`` (with Retry-After) rather
than risk counting a retry twice.
"""

from __future__ import annotations

import hashlib
import logging
import re

from redis.exceptions import OutOfMemoryError, RedisError
from starlette.requests import Request

from api.errors import ApiError
from api.services import Services
from daemon.errors import KeyReused, MemoryFull
from daemon.pipeliner import pipeliner_for

log = logging.getLogger(__name__)

REPLAYED_HEADER = (b"idempotent-replayed", b"true")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")  # visible ASCII, no spaces


def idempotency_key(request: Request) -> str:
    """The request's Idempotency-Key, or "" when it has none."""
    return checked_idempotency_key(request.headers.get("idempotency-key"))


def checked_idempotency_key(key: str | None) -> str:
    """An Idempotency-Key header's value checked (400 when malformed), or "" when there is none."""
    if key is None:
        return ""
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 128 visible ASCII characters."
        )
    return key


def fingerprint(*parts: bytes) -> str:
    """What identifies a request's content: a 128-bit hash of its parts."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


Claim = tuple[int, str, str]  # the record's shard, its name (daemon.keys.*_record), the fingerprint


async def claim(services: Services, record: Claim, answer: str) -> str | None:
    """Claim the record for this request: None when claimed, else the first request's answer.

    422 when the key was used for a different request; 503 when Redis cannot be asked.
    """
    shard, name, request_fingerprint = record
    try:
        status, stored = await services.store.claim(
            shard, name, "claim", request_fingerprint, answer, client=pipeliner_for(services)
        )
    except OutOfMemoryError:
        services.metrics.redis_oom_refusals.labels(what="request").inc()
        raise MemoryFull(services.settings.buffer_retry_after_s) from None
    except (RedisError, OSError) as exc:
        log.warning("Idempotency-Key not checked: Redis unavailable (%s)", exc)
        raise ApiError(
            503,
            "idempotency_unavailable",
            "Idempotency-Key cannot be checked right now; retry later.",
            {"Retry-After": str(services.settings.buffer_retry_after_s)},
        ) from None
    if status == "conflict":
        raise KeyReused()
    return None if status == "claimed" else str(stored)


async def release(services: Services, record: Claim) -> None:
    """Give a claim back (its request was refused after claiming), so that a retry is applied."""
    shard, name, request_fingerprint = record
    try:
        await services.store.claim(
            shard, name, "release", request_fingerprint, "", client=pipeliner_for(services)
        )
    except (RedisError, OSError) as exc:  # the retry will be answered as a replay: say so
        log.error("Idempotency-Key claim %s not released (%s); a retry will not be applied", name, exc)
