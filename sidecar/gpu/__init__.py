"""GPU readings (NVML, dcgm-exporter), per-request GPU time, energy and cost, and the torch probe."""
