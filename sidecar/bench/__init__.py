"""`sidecar bench`: the sidecar beside direct access, a bare aiohttp proxy and nginx, in one run.

upstream:   the fast upstream every target forwards to (a ~200-byte JSON body, an SSE stream)
baseline:   the 40-line aiohttp proxy that is the floor for any aiohttp design
targets:    starting each target as its own process, pinned to a core
load:       the load generators (wrk when installed, else a built-in one) and process probes
scenarios:  latency, throughput, SSE fidelity, memory under steady load
report:     medians of rounds, ratios, the table and the JSON
"""
