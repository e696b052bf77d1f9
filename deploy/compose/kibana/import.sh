#!/bin/sh
# Imports the auditors' data view and saved searches into Kibana through the saved
# objects import API, overwriting earlier copies (so edits to the NDJSON file land on
# the next `docker compose up`). Run by the kibana-init service (curlimages/curl).
set -eu
KIBANA_URL="${KIBANA_URL:-http://kibana:5601}"
FILE="${FILE:-/kibana/sidecar-audit.ndjson}"

attempt=0
until curl -fsS "$KIBANA_URL/api/status" | grep -q '"level":"available"'; do
    attempt=$((attempt + 1))
    if [ "$attempt" -ge 60 ]; then
        echo "kibana-init: Kibana at $KIBANA_URL is not available after 5 minutes" >&2
        exit 1
    fi
    sleep 5
done

response="$(curl -sS -X POST "$KIBANA_URL/api/saved_objects/_import?overwrite=true" \
    -H 'kbn-xsrf: true' --form "file=@$FILE")"
echo "$response"
case "$response" in
    *'"success":true'*) echo "kibana-init: imported $FILE" ;;
    *) echo "kibana-init: the import failed (see the response above)" >&2; exit 1 ;;
esac
