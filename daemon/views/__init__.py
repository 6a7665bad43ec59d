"""The view buffer: views coalesced in process, drained to Redis (docs/design.md, decision 3)."""
