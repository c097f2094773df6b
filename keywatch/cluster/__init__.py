"""Several daemons, one fleet: membership, leadership with a fencing token, and sharded probing.

On PostgreSQL, instances register with a heartbeat (`cluster_members`), one of them holds a session-level
advisory lock on a dedicated connection and is the leader; the `cluster_leader` row names it and carries the
fencing token, incremented at each takeover. Keys are shared among the live members by rendezvous hashing
(`shard.py`). On SQLite one instance runs alone and always leads (`lockfile.py` refuses a second one).
"""
