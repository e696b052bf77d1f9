"""Histogram bucket boundaries, shared by the metrics and the rules.

The rules compute quantiles and latency SLOs in-process from the same buckets
the metrics publish, so a rule evaluated here and its exported PromQL twin
(`histogram_quantile` over /metrics) read the same value.
"""

from __future__ import annotations

# OpenTelemetry's advice for http.server.request.duration, extended upward:
# model calls routinely outlast its 10 s top bucket.
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                         30.0, 60.0, 120.0, 300.0, 600.0)  # fmt: skip
BODY_SIZE_BUCKETS = tuple(float(4**n) for n in range(4, 14))  # 256 B .. 64 MiB
# OpenTelemetry GenAI advice, extended upward for long generations as vLLM does.
GEN_AI_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
                           163.84, 327.68, 655.36, 1310.72)  # fmt: skip
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0)  # fmt: skip
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TOKEN_BUCKETS = tuple(float(4**n) for n in range(14))  # 1 .. 67,108,864
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
