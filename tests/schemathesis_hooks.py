"""Loaded by the schemathesis CLI (SCHEMATHESIS_HOOKS=schemathesis_hooks) in tests/test_openapi_fuzz.py:
teaches it to send the batch endpoint's msgpack bodies."""

from __future__ import annotations

from typing import Any

import msgpack
import schemathesis


@schemathesis.serializer("application/msgpack")
def msgpack_body(ctx: Any, value: Any) -> bytes:
    return msgpack.packb(_packable(value))


def _packable(value: Any) -> Any:
    """``value`` with the integers msgpack cannot hold (beyond 64 bits, which JSON allows) as floats:
    still not a valid count, which is what such a generated case is about."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return float(value)
    if isinstance(value, list):
        return [_packable(v) for v in value]
    if isinstance(value, dict):
        return {k: _packable(v) for k, v in value.items()}
    return value
