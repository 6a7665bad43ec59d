"""Loaded by the schemathesis CLI (SCHEMATHESIS_HOOKS=schemathesis_hooks) in tests/test_openapi_fuzz.py:
teaches it to send the batch endpoint's msgpack bodies."""

from __future__ import annotations

from typing import Any

import msgpack
import schemathesis


@schemathesis.serializer("application/msgpack")
def msgpack_body(ctx: Any, value: Any) -> bytes:
    return msgpack.packb(value)
