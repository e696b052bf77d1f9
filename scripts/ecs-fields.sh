#!/usr/bin/env bash
# Writes ECS's published field list for the version the audit records claim to
# .cache/ecs/ecs_flat-<version>.json, from Elastic's @elastic/ecs npm package (its EcsFlat is
# generated from elastic/ecs's generated/ecs/ecs_flat.yml at the same tag).
# tests/audit/test_ecs_conformance.py checks records and the index template against it.
#
#   bash scripts/ecs-fields.sh [python]   # python: the interpreter with the sidecar installed
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${1:-.venv/bin/python}"
version="$("$PYTHON" -c 'from sidecar.audit.schema import ECS_VERSION; print(ECS_VERSION)')"
target=".cache/ecs/ecs_flat-$version.json"
[[ -s "$target" ]] && exit 0

if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
(cd "$workdir" && npm pack --silent "@elastic/ecs@$version" >/dev/null && tar xzf elastic-ecs-*.tgz)
mkdir -p "$(dirname "$target")"
node -e '
    const [, module, packageJson] = process.argv;
    const fields = require(module).EcsFlat;
    const version = require(packageJson).version;
    process.stdout.write(JSON.stringify({version, fields}));
' "$workdir/package/build/commonjs/ecs_flat.js" "$workdir/package/package.json" > "$target.partial"
mv "$target.partial" "$target"
echo "ECS $version field list: $target"
