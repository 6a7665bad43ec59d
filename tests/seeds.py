"""Repeatable randomness for tests: every random choice a test makes comes from a ``random.Random``
whose seed is printed (pytest shows it with a failure's captured output), and can be set with
ENGAGEMENT_TEST_SEED to repeat a failed run's choices."""

from __future__ import annotations

import os
import random
import secrets

SEED_ENV = "ENGAGEMENT_TEST_SEED"


def seeded_random(name: str) -> random.Random:
    """A generator for ``name`` (what it drives), seeded from ENGAGEMENT_TEST_SEED when set, else from a
    fresh random seed; the seed is printed either way."""
    given = os.environ.get(SEED_ENV, "").strip()
    seed = int(given) if given else secrets.randbits(32)
    print(f"{name}: seed {seed} (repeat with {SEED_ENV}={seed})")
    return random.Random(seed)
