#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine with
# Python 3.11, then runs it. Arguments are passed to pytest.
#
#   bash scripts/test.sh            # the whole suite, then scripts/test-lowest.sh (what CI runs)
#   bash scripts/test.sh -k stream  # a subset, newest dependencies only
#
# Set CI=true to make integration tests fail, instead of skip, when a tool
# they need is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

# Debian programs the integration tests start; installed only when missing.
DEBIAN_PACKAGES=(prometheus prometheus-alertmanager wrk nginx-light docker-compose systemd chromium)
missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
# torch==2.13.0 is the CPU build; an unpinned torch would pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev,demo]' 'torch==2.13.0'

# ECS's published field list, which the audit schema tests check records against.
bash scripts/ecs-fields.sh "$VENV/bin/python"

# pytest exits 5 when it collects no tests, which fails this script as it should.
if (($# > 0)); then
    exec "$VENV/bin/python" -m pytest "$@"
fi
"$VENV/bin/python" -m pytest
# The whole suite passed at the newest versions; now the lowest ones pyproject.toml allows.
exec bash scripts/test-lowest.sh
