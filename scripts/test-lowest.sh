#!/usr/bin/env bash
# Runs the tests that exercise the sidecar's libraries against the LOWEST version of every
# direct dependency pyproject.toml allows (uv's lowest-direct resolution), in an environment
# of its own, so each declared lower bound is one CI has run. scripts/test.sh calls it after
# the main suite; arguments are passed to pytest.
#
#   bash scripts/test-lowest.sh                 # the library-facing tests
#   bash scripts/test-lowest.sh tests/proxy -x  # a subset
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
LOWEST_VENV="${LOWEST_VENV:-.venv-lowest}"
UV_VERSION="0.13.10"

if [[ ! -x "$VENV/bin/uv" ]] || [[ "$("$VENV/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
UV="$VENV/bin/uv"
if [[ ! -x "$LOWEST_VENV/bin/python" ]]; then
    "$UV" venv --quiet --python "$PYTHON" "$LOWEST_VENV"
fi
# torch is the one demo dependency not taken from the index: its index build is CUDA's,
# gigabytes large; the CPU build lies in the machine's wheel folder where there is one.
wheels=()
[[ -d /opt/wheels ]] && wheels=(--find-links /opt/wheels)
"$UV" pip install --quiet --python "$LOWEST_VENV/bin/python" --resolution lowest-direct --reinstall-package inference-sidecar \
    "${wheels[@]}" -e '.[dev,demo]' 'torch==2.13.0'
echo "lowest direct dependencies:"
"$UV" pip list --quiet --python "$LOWEST_VENV/bin/python" 2>/dev/null \
    | grep -Ei '^(aiohttp|prometheus.client|opentelemetry-(sdk|exporter-otlp-proto-http)|elasticsearch|nvidia-ml-py|pyyaml|pydantic|cryptography|orjson|pyjwt|numpy|torch) ' \
    | sed 's/^/  /'

if (($# == 0)); then
    # The parts that call into the libraries: aiohttp and OpenTelemetry (proxy, telemetry),
    # the Elasticsearch client, orjson and cryptography (audit), prometheus-client
    # (telemetry, gpu), nvidia-ml-py (gpu), pydantic and PyYAML (config), PyJWT (proxy/auth),
    # torch and numpy (demo). Rules, deploy files, fuzzers and benchmarks use the same calls
    # and run at the newest versions only, which keeps CI's whole run within its time.
    set -- tests/proxy tests/audit tests/telemetry tests/gpu tests/demo tests/test_config.py
fi
exec "$LOWEST_VENV/bin/python" -m pytest -p no:cacheprovider "$@"
