"""Alerting: sinks (one module each), the durable outbox, and the pipeline that keeps alerts quiet."""
