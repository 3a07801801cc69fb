#!/usr/bin/env bash
# Every example of this folder, end to end, one after another, against a server of its own: a fresh
# SQLite file in a temporary folder, local Ray, no API keys (loopback only), port NAS_PORT (18450).
# Prints one markdown row per example (exit status, seconds, load average) and where the logs are.
#   examples/run_all.sh            # from the repository root, after `make install`
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/nas-examples.XXXX")
export NAS_DATABASE_URL="sqlite:///$LOGS/nas.db" NAS_HOST=127.0.0.1 NAS_PORT=${NAS_PORT:-18450}
export NAS_SERVER_URL="http://127.0.0.1:$NAS_PORT" NAS_SUPERNET_DIR="$LOGS/supernets"
export PATH="$ROOT/.venv/bin:$PATH"
nas serve --no-auth > "$LOGS/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 90); do curl -sf "$NAS_SERVER_URL/v1/health" > /dev/null && break; sleep 2; done
curl -sf "$NAS_SERVER_URL/v1/health" > /dev/null || { echo "the server did not start: see $LOGS/server.log" >&2; exit 1; }
failed=0
echo "| example | exit | seconds | load average | result |"
echo "|---|---|---|---|---|"
for f in examples/*.yaml examples/*.json examples/farm_device.sh; do
  out="$LOGS/$(basename "$f").out"
  start=$(date +%s)
  if [[ $f == *.sh ]]; then bash "$f" > "$out" 2>&1; else nas search submit "$f" --wait > "$out" 2>&1; fi
  rc=$?
  [[ $rc == 0 ]] || failed=1
  result=$(grep -m1 -E "^ message " "$out" | sed 's/^ message *//; s/ *$//')
  echo "| \`$f\` | $rc | $(( $(date +%s) - start )) | $(cut -d' ' -f1 /proc/loadavg) | ${result:-see $out} |"
done
echo "logs: $LOGS"
exit $failed
