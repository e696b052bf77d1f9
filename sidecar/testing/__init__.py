"""Stand-ins for the systems the sidecar talks to, for tests, benchmarks and trying things out."""
