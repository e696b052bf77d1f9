"""A small torch model server to run the sidecar against, and the `sidecar demo` tour.

torch is an optional dependency (`pip install 'inference-sidecar[demo]'`);
nothing outside this package imports it.
"""
