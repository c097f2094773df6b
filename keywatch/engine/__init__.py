"""Detection (prober), state tracking, decisions (policy) and actions (executor)."""
