"""Metrics, tracing and the admin endpoints."""
