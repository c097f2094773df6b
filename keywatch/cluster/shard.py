"""Rendezvous (highest random weight) hashing: each key goes to the live member with the highest score for
(member, key). A member joining or leaving moves only the keys it wins or held; nothing else moves."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence


def score(member: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}\0{key}".encode(), digest_size=8).digest(), "big")


def owner(key: str, members: Sequence[str]) -> str:
    return max(members, key=lambda m: (score(m, key), m))


def share(keys: Iterable[str], members: Sequence[str], me: str) -> set[str]:
    """The keys `me` probes among `members` (all of them when it is alone or not a member yet)."""
    live = sorted(set(members) | {me})
    if len(live) == 1:
        return set(keys)
    return {k for k in keys if owner(k, live) == me}
