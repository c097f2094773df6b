"""Delivery ids: globally unique and never reused, so a receiver may dedupe on them for ever.

An outbox row's integer id is not such an id: SQLite hands out the largest id again once retention has
deleted it, and a new database starts from 1. A delivery id is a UUIDv7 (RFC 9562: 48 bits of Unix
milliseconds, then 74 random bits), made once when the row is written and kept in the row, so every retry
and every restart sends the same id, and no two rows, databases or `alert test` runs share one.

Python's own `uuid.uuid7` is used where it exists (3.14); before that, the few lines below build the same
layout from `os.urandom`, so no dependency is needed for it.
"""

from __future__ import annotations

import os
import time
import uuid

PREFIX = "msg_"


def uuid7() -> uuid.UUID:
    native = getattr(uuid, "uuid7", None)
    if native is not None:
        return native()  # type: ignore[no-any-return]
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = (rand >> 62) & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)


def new_delivery_id() -> str:
    """`msg_<uuid7>`: the `webhook-id` of a Standard Webhooks delivery, and the `id` of its payload."""
    return PREFIX + str(uuid7())
