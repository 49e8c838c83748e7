#!/usr/bin/env bash
# Validates deploy/grafana/dashboards/*.json. Needs Node >= 20 and npm, and the npm registry.
#
#   bash deploy/grafana/validate/run.sh
#
# Installs the pinned packages (package-lock.json, integrity-checked) into node_modules here, then:
#   1. validates every dashboard: Grafana's dashboard and panel schemas from @grafana/schema,
#      PromQL syntax, metric names (allowed-metrics.txt), unique panel ids, gridPos, datasources;
#   2. self-test: breaks offboarder.json in known ways and checks each breakage is reported, so a
#      validator that stopped checking cannot pass silently.
# Exits non-zero on any error.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "node $(node --version) is too old: need Node >= 20" >&2
  exit 1
fi

# Reinstall only when the lock file changed since the last install.
stamp=node_modules/.offboarder-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

shopt -s nullglob
dashboards=(../dashboards/*.json)
if [ ${#dashboards[@]} -eq 0 ]; then
  echo "no dashboards under deploy/grafana/dashboards" >&2
  exit 1
fi

node validate.mjs "${dashboards[@]}"
node validate.mjs --self-test ../dashboards/offboarder.json
