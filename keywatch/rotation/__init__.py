"""Rotation: a new credential created, published, proven, promoted, and the old one retired after a grace
period, as persisted idempotent steps (machine.py) over the rows of the `rotations` table (store.py).
See docs/rotation.md."""
