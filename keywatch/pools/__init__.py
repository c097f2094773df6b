"""Pools: the healthy keys of a group, published where applications pick them up (a Redis set, a file).

This is the one place secrets leave keywatch's memory, on purpose: an application needs the secret to
use the key. The file is mode 0600 and replaced atomically; the Redis key is the user's to protect
(ACLs, a private instance). Logs, metrics and events name keys and pools, never secrets.
"""

from keywatch.pools.membership import PoolMember, members, order_key
from keywatch.pools.publish import PoolManager, promoted

__all__ = ["PoolManager", "PoolMember", "members", "order_key", "promoted"]
