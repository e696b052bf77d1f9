"""Forwarding between clients and the model server."""
