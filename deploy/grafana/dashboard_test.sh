#!/bin/bash
# The Grafana dashboard against real data: starts deltaserve-server with
# --metrics_listen, Debian's Prometheus (/usr/bin/prometheus) scraping it
# every second, load from deltaserve-bench and session calls from
# deltaserve-cli (create, generate, pause, resume, export, import); waits
# (polling Prometheus) until the last of it is scraped, then
# dashboard_check.py evaluates every panel's query through Prometheus's
# HTTP API and requires data from each; the same Prometheus loads
# deploy/prometheus/alerts.yml, every rule must evaluate without error and
# every metric the alert and autoscaling rules name must exist. Every wait has a deadline; the
# server and Prometheus are killed on every exit path.
set -uo pipefail

readonly RUNFILES="${TEST_SRCDIR:?}/deltaserve"
readonly SERVER="${RUNFILES}/services/server/deltaserve-server"
readonly CLI="${RUNFILES}/clients/cli/deltaserve-cli"
readonly BENCH="${RUNFILES}/clients/bench/deltaserve-bench"
readonly DASHBOARD="${RUNFILES}/deploy/grafana/deltaserve.json"
readonly CHECK="${RUNFILES}/deploy/grafana/dashboard_check.py"
readonly ALERTS="${RUNFILES}/deploy/prometheus/alerts.yml"
readonly ADAPTER_RULES="${RUNFILES}/deploy/k8s/examples/autoscaling/prometheus-adapter-rules.yaml"
readonly PROMETHEUS=/usr/bin/prometheus
readonly PYTHON=/usr/bin/python3
readonly WORK="$(mktemp -d "${TEST_TMPDIR:-/tmp}/dashboard.XXXXXX")"

source "${RUNFILES}/tests/e2e/server_process.sh"

PROMETHEUS_PID=""
cleanup() {
  if [[ -n "${PROMETHEUS_PID}" ]] && kill -0 "${PROMETHEUS_PID}" 2>/dev/null; then
    kill -KILL "${PROMETHEUS_PID}" 2>/dev/null
  fi
  cleanup_server
}
trap cleanup EXIT

[[ -x "${PROMETHEUS}" ]] ||
  fail "${PROMETHEUS} is missing: apt-get install prometheus (bazel/install_deps.sh)"
# Loopback requests must not go through a proxy from the environment.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY

start_server --threads=1 --metrics_listen=127.0.0.1:0
if ! read -r -t 30 -u 3 METRICS_LINE; then
  fail "the server printed no metrics line"
fi
[[ "${METRICS_LINE}" =~ ^deltaserve-server\ metrics\ on\ http://(127\.0\.0\.1:[0-9]+)/metrics$ ]] ||
  fail "unexpected metrics line: ${METRICS_LINE}"
readonly METRICS_ADDRESS="${BASH_REMATCH[1]}"
[[ "${SERVER_LINE}" =~ \(model\ ([^,]+), ]] || fail "no model in ${SERVER_LINE}"
readonly MODEL="${BASH_REMATCH[1]}"

# A free port for Prometheus (bound and released; Prometheus fails loudly
# if something takes it meanwhile).
PROMETHEUS_PORT="$("${PYTHON}" -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()')" || fail "no free port"
readonly PROMETHEUS_URL="http://127.0.0.1:${PROMETHEUS_PORT}"
cat >"${WORK}/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - ${ALERTS}
scrape_configs:
  - job_name: deltaserve
    static_configs:
      - targets: ["${METRICS_ADDRESS}"]
EOF
"${PROMETHEUS}" --config.file="${WORK}/prometheus.yml" \
  --storage.tsdb.path="${WORK}/tsdb" \
  --web.listen-address="127.0.0.1:${PROMETHEUS_PORT}" \
  >"${WORK}/prometheus.log" 2>&1 &
PROMETHEUS_PID=$!

prometheus_fail() {
  echo "--- prometheus log:" >&2
  tail -n 30 "${WORK}/prometheus.log" >&2
  fail "$@"
}

# Ready, and scraping the server (its target up).
timeout 90 "${PYTHON}" - "${PROMETHEUS_URL}" <<'EOF' ||
import json, sys, time, urllib.parse, urllib.request
url = sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": 'up{job="deltaserve"} == 1'})
while True:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            if json.load(r)["data"]["result"]:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.25)
EOF
  prometheus_fail "Prometheus did not come up scraping ${METRICS_ADDRESS} within 90 s"
echo "prometheus: scraping ${METRICS_ADDRESS} every second"

# Load: closed loop, 4 in flight.
timeout 300 "${BENCH}" --server="127.0.0.1:${SERVER_PORT}" --concurrency=4 \
  --num_requests=24 --input_len=64 --output_len=16 \
  >"${WORK}/bench.out" 2>&1 || fail "deltaserve-bench: $(cat "${WORK}/bench.out")"
grep -i "throughput" "${WORK}/bench.out" | head -n 3

cli() {
  timeout 60 "${CLI}" --server="127.0.0.1:${SERVER_PORT}" "$@"
}
# Sessions: one left on the device, one paused to disk, one imported.
for _ in 1 2; do
  id="$(cli session create)" || fail "session create"
  cli generate --session="${id}" --token_ids=5,17,29,41 --max_new_tokens=8 \
    --ignore_eos >/dev/null 2>&1 || fail "generate on a session"
  cli session pause "${id}" >/dev/null || fail "session pause"
  cli session resume "${id}" >/dev/null || fail "session resume"
  cli session export "${id}" --out="${WORK}/s.dss" 2>/dev/null ||
    fail "session export"
done
cli session pause "${id}" >/dev/null || fail "session pause"
cli session import --in="${WORK}/s.dss" >/dev/null || fail "session import"

# Prometheus has scraped the last call (the import), then every panel.
timeout 300 "${PYTHON}" "${CHECK}" --dashboard="${DASHBOARD}" \
  --prometheus="${PROMETHEUS_URL}" --model_name="${MODEL}" \
  --rate_interval=5m \
  --wait_for='sum(deltaserve_session_migrate_seconds_count{direction="import"}) >= 1' \
  --wait_for='sum(deltaserve_request_success_total{finished_reason="length"}) >= 26' \
  --metric_names_from="${ALERTS}" --metric_names_from="${ADAPTER_RULES}" \
  --rules_loaded="$(grep -c '^  - alert:' "${ALERTS}")" ||
  prometheus_fail "the dashboard's panels do not all have data (above)"

kill -TERM "${PROMETHEUS_PID}"
timeout 30 tail --pid="${PROMETHEUS_PID}" -f /dev/null ||
  prometheus_fail "Prometheus did not stop within 30 s"
PROMETHEUS_PID=""
stop_server
echo "PASS"
