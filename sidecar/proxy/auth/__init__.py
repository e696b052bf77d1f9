"""Authentication on the proxy port: API keys and JWTs (see `authenticator`)."""
