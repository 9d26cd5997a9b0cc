#!/bin/bash
# Starts deltaserve-server with --metrics_listen=127.0.0.1:0, drives it with
# deltaserve-cli (generations to their length and to a stop token, a
# session created, continued, paused, resumed, exported and imported),
# fetches /metrics over HTTP and checks that every metric is there with the
# model_name label and counts what was done; `promtool check metrics` must
# accept the text. A metrics port in use and a malformed metrics address
# must stop a second server with a clear error. Every wait has a deadline.
set -uo pipefail

readonly RUNFILES="${TEST_SRCDIR:?}/deltaserve"
readonly SERVER="${RUNFILES}/services/server/deltaserve-server"
readonly CLI="${RUNFILES}/clients/cli/deltaserve-cli"
readonly PYTHON=/usr/bin/python3
readonly WORK="$(mktemp -d "${TEST_TMPDIR:-/tmp}/metrics_e2e.XXXXXX")"
readonly CLI_TIMEOUT=60

source "${RUNFILES}/tests/e2e/server_process.sh"

command -v promtool >/dev/null ||
  fail "promtool is missing: apt-get install prometheus (bazel/install_deps.sh)"
# Loopback requests must not go through a proxy from the environment.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY

start_server --threads=1 --metrics_listen=127.0.0.1:0
if ! read -r -t 30 -u 3 METRICS_LINE; then
  fail "the server printed no metrics line"
fi
echo "server: ${METRICS_LINE}"
[[ "${METRICS_LINE}" =~ ^deltaserve-server\ metrics\ on\ http://127\.0\.0\.1:([0-9]+)/metrics$ ]] ||
  fail "unexpected metrics line: ${METRICS_LINE}"
readonly METRICS_PORT="${BASH_REMATCH[1]}"
[[ "${METRICS_PORT}" -gt 0 && "${METRICS_PORT}" -ne "${SERVER_PORT}" ]] ||
  fail "metrics port ${METRICS_PORT}"

cli() {
  timeout "${CLI_TIMEOUT}" "${CLI}" --server="127.0.0.1:${SERVER_PORT}" "$@"
}

GENERATED=0
# gen ARGS...: a greedy generation; prints its ids, counts them.
gen() {
  cli generate --temperature=0 --print_token_ids "$@" \
    >"${WORK}/gen.out" 2>"${WORK}/gen.err" ||
    fail "generate $* failed: $(cat "${WORK}/gen.err")"
  local ids
  ids="$(tail -n 1 "${WORK}/gen.out")"
  [[ "${ids}" =~ ^[0-9]+(,[0-9]+)*$ ]] || fail "generate printed '${ids}'"
  IFS=',' read -r -a ID_ARRAY <<<"${ids}"
  GENERATED=$((GENERATED + ${#ID_ARRAY[@]}))
}

readonly PROMPT="838,768,305,516,223" # 5 tokens
for _ in 1 2 3; do
  gen --token_ids="${PROMPT}" --max_new_tokens=8 --ignore_eos
done
# The same prompt stopped at its third token's id: finish reason stop.
STOP_ID="${ID_ARRAY[2]}"
gen --token_ids="${PROMPT}" --max_new_tokens=20 --ignore_eos \
  --stop_token_ids="${STOP_ID}"
(( ${#ID_ARRAY[@]} <= 3 )) || fail "the stop token did not stop it"

# A session: created, continued, paused, resumed, exported, imported.
id="$(cli session create)" || fail "session create"
gen --session="${id}" --token_ids=5,17,29 --max_new_tokens=4 --ignore_eos
cli session pause "${id}" >/dev/null || fail "session pause"
cli session resume "${id}" >"${WORK}/resume.out" || fail "session resume"
grep -q "^tier: device" "${WORK}/resume.out" ||
  fail "resumed: $(cat "${WORK}/resume.out")"
cli session export "${id}" --out="${WORK}/s.dss" 2>/dev/null ||
  fail "session export"
imported="$(cli session import --in="${WORK}/s.dss")" || fail "session import"
[[ "${imported}" =~ ^[0-9a-f]{32}$ ]] || fail "imported id '${imported}'"

fetch() { # fetch URL OUT: the body, or fails on any other status than 200
  timeout 30 "${PYTHON}" - "$1" "$2" <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=20) as r:
    assert r.status == 200, r.status
    assert r.headers["Content-Type"].startswith("text/plain"), r.headers
    open(sys.argv[2], "wb").write(r.read())
EOF
}
fetch "http://127.0.0.1:${METRICS_PORT}/metrics" "${WORK}/metrics.txt" ||
  fail "GET /metrics failed"
echo "--- /metrics: $(wc -l <"${WORK}/metrics.txt") lines"

# Names, labels and counts.
GENERATED="${GENERATED}" timeout 30 "${PYTHON}" - "${WORK}/metrics.txt" <<'EOF' ||
import os, re, sys

text = open(sys.argv[1]).read()
samples = {}
line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
for line in text.splitlines():
    if not line or line.startswith("#"):
        continue
    m = line_re.match(line)
    assert m, "unparsable line: " + line
    labels = dict(re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
    assert labels.get("model_name") == "demo-qwen35", line
    del labels["model_name"]
    samples[(m.group(1), tuple(sorted(labels.items())))] = float(m.group(4))

failures = []
def value(name, **labels):
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        failures.append("missing: %s %s" % (name, labels))
        return None
    return samples[key]

def expect(name, want, **labels):
    got = value(name, **labels)
    if got is not None and got != want:
        failures.append("%s %s = %s, want %s" % (name, labels, got, want))

def expect_gt(name, floor, **labels):
    got = value(name, **labels)
    if got is not None and not got > floor:
        failures.append("%s %s = %s, want > %s" % (name, labels, got, floor))

generated = int(os.environ["GENERATED"])
expect("deltaserve_generation_tokens_total", generated)
expect("deltaserve_prompt_tokens_total", 4 * 5 + 3)
expect("deltaserve_request_success_total", 4, finished_reason="length")
expect("deltaserve_request_success_total", 1, finished_reason="stop")
expect("deltaserve_request_success_total", 0, finished_reason="cancelled")
expect("deltaserve_request_success_total", 0, finished_reason="error")
expect("deltaserve_num_requests_running", 0)
expect("deltaserve_num_requests_waiting", 0)
value("deltaserve_kv_cache_usage_perc")
expect("deltaserve_num_preemptions_total", 0)
for h in ("time_to_first_token_seconds", "e2e_request_latency_seconds",
          "request_queue_time_seconds"):
    expect("deltaserve_%s_count" % h, 5)
    expect("deltaserve_%s_bucket" % h, 5, le="+Inf")
    value("deltaserve_%s_sum" % h)
expect("deltaserve_inter_token_latency_seconds_count", generated - 5)
expect_gt("deltaserve_iteration_tokens_count", 0)
expect("deltaserve_sessions", 1, tier="device")
expect("deltaserve_sessions", 0, tier="host")
expect("deltaserve_sessions", 1, tier="disk")
expect_gt("deltaserve_session_bytes", 0, tier="device")
expect_gt("deltaserve_session_bytes", 0, tier="disk")
expect("deltaserve_session_pause_seconds_count", 1)
expect("deltaserve_session_resume_seconds_count", 1)
expect("deltaserve_session_migrate_seconds_count", 1, direction="export")
expect("deltaserve_session_migrate_seconds_count", 1, direction="import")
expect_gt("deltaserve_state_store_write_bytes_total", 0)
expect_gt("deltaserve_state_store_read_bytes_total", 0)
# Commits: the new session, its generation, the import.
expect("deltaserve_state_store_write_seconds_count", 3)
for g in ("actual_delayed_write_rate", "is_write_stopped",
          "num_running_compactions", "num_running_flushes",
          "compaction_pending", "estimate_pending_compaction_bytes",
          "live_sst_files_bytes", "blob_files_bytes"):
    value("deltaserve_rocksdb_" + g)
for c in ("stall_seconds_total", "compaction_read_bytes_total",
          "compaction_write_bytes_total", "flush_write_bytes_total"):
    value("deltaserve_rocksdb_" + c)
for kind in ("slowdown", "stop"):
    value("deltaserve_rocksdb_write_stalls_total", kind=kind)
for name, kind in (("deltaserve_prompt_tokens_total", "counter"),
                   ("deltaserve_sessions", "gauge"),
                   ("deltaserve_time_to_first_token_seconds", "histogram"),
                   ("deltaserve_iteration_tokens", "histogram")):
    if "# TYPE %s %s\n" % (name, kind) not in text:
        failures.append("no TYPE %s %s" % (name, kind))
if failures:
    print("\n".join(failures))
    sys.exit(1)
print("ok: %d samples, %d tokens generated" % (len(samples), generated))
EOF
  fail "the metrics do not match what was done (above); /metrics was:
$(grep -v '^#' "${WORK}/metrics.txt" | grep -v _bucket)"

promtool check metrics <"${WORK}/metrics.txt" >"${WORK}/promtool.out" 2>&1 ||
  fail "promtool check metrics: $(cat "${WORK}/promtool.out")"
echo "ok: promtool check metrics"

# Other paths are not found.
timeout 30 "${PYTHON}" - "http://127.0.0.1:${METRICS_PORT}/nothing" <<'EOF' ||
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=20)
except urllib.error.HTTPError as e:
    sys.exit(0 if e.code == 404 else 1)
sys.exit(1)
EOF
  fail "GET /nothing did not answer 404"

# A second server on the same metrics port: a clear error, exit 1, and no
# "listening" line.
expect_refused() { # expect_refused PATTERN ARGS...
  local pattern="$1"
  shift
  timeout 60 "${SERVER}" --listen=127.0.0.1:0 --state_dir="${WORK}/other" \
    "$@" >"${WORK}/other.out" 2>"${WORK}/other.err"
  local rc=$?
  [[ ${rc} -eq 1 ]] || fail "server $* exited ${rc}: $(cat "${WORK}/other.err")"
  grep -q "${pattern}" "${WORK}/other.err" ||
    fail "server $* said: $(cat "${WORK}/other.err")"
  [[ ! -s "${WORK}/other.out" ]] || fail "server $* printed $(cat "${WORK}/other.out")"
  echo "ok: $* refused: $(cat "${WORK}/other.err")"
}
expect_refused "^deltaserve-server: error: UNAVAILABLE: cannot serve metrics on 127.0.0.1:${METRICS_PORT}: .*Address already in use" \
  --metrics_listen="127.0.0.1:${METRICS_PORT}"
expect_refused "^deltaserve-server: error: INVALID_ARGUMENT: metrics address \"127.0.0.1:99999\" has a bad port" \
  --metrics_listen=127.0.0.1:99999
expect_refused "^deltaserve-server: error: INVALID_ARGUMENT: metrics address \"nonsense\"" \
  --metrics_listen=nonsense

stop_server
echo "PASS"
