"""Audit pipeline: ECS events, redaction, hash chain, durable spool, sinks."""
