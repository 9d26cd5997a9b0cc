#!/bin/bash
# Starts deltaserve-server (its embedded demo model, a free port), drives it
# with deltaserve-cli, then stops it with SIGTERM during a generation and
# checks that the generation ends normally and the server exits cleanly.
# Every wait has a deadline, so the test fails rather than hangs.
set -uo pipefail

readonly RUNFILES="${TEST_SRCDIR:?}/deltaserve"
readonly SERVER="${RUNFILES}/services/server/deltaserve-server"
readonly CLI="${RUNFILES}/clients/cli/deltaserve-cli"
readonly WORK="$(mktemp -d "${TEST_TMPDIR:-/tmp}/cli_e2e.XXXXXX")"
readonly CLI_TIMEOUT=60

source "${RUNFILES}/tests/e2e/server_process.sh"

start_server --threads=1 --max_running_requests=4 --kv_cache_tokens=4096
[[ "${SERVER_LINE}" =~ \(model\ demo-qwen35,\ device\ cpu\)$ ]] ||
  fail "unexpected first line: ${SERVER_LINE}"
readonly PORT="${SERVER_PORT}"

cli() {
  timeout "${CLI_TIMEOUT}" "${CLI}" --server="127.0.0.1:${PORT}" "$@"
}

# Text prompt, greedy, with the ids printed after the text.
cli generate --prompt="import os" --max_new_tokens=16 --temperature=0 \
  --print_token_ids >"${WORK}/gen.out" 2>"${WORK}/gen.err"
rc=$?
[[ ${rc} -eq 0 ]] || fail "generate exited ${rc}: $(cat "${WORK}/gen.err")"
IDS="$(tail -n 1 "${WORK}/gen.out")"
TEXT="$(head -n -1 "${WORK}/gen.out")"
echo "generated text: ${TEXT}"
echo "generated ids: ${IDS}"
[[ -n "${TEXT//[[:space:]]/}" ]] || fail "no text generated"
[[ "${IDS}" =~ ^[0-9]+(,[0-9]+)*$ ]] || fail "ids line is '${IDS}'"
IFS=',' read -r -a ID_ARRAY <<<"${IDS}"
[[ ${#ID_ARRAY[@]} -eq 16 ]] || fail "expected 16 ids, got ${#ID_ARRAY[@]}"

# Token-id input: "import os\n\ndef " continues greedily as golden.json's
# prompts[0].greedy32_ids begin.
cli generate --token_ids=838,768,305,516,223 --max_new_tokens=8 \
  --print_token_ids >"${WORK}/ids.out" 2>"${WORK}/ids.err" ||
  fail "generate --token_ids failed: $(cat "${WORK}/ids.err")"
[[ "$(tail -n 1 "${WORK}/ids.out")" == "1038,836,1582,320,262,398,41,1185" ]] ||
  fail "token-id generation gave $(tail -n 1 "${WORK}/ids.out")"

# Health.
HEALTH="$(cli health 2>"${WORK}/health.err")" ||
  fail "health exited non-zero: $(cat "${WORK}/health.err")"
[[ "${HEALTH}" == "SERVING" ]] || fail "health printed '${HEALTH}'"

# Models.
cli models >"${WORK}/models.out" 2>&1 || fail "models: $(cat "${WORK}/models.out")"
grep -q "^demo-qwen35 (default)$" "${WORK}/models.out" ||
  fail "models printed: $(cat "${WORK}/models.out")"

# A malformed request: non-zero exit and the gRPC code on stderr.
cli generate --prompt="import os" --top_p=2 >"${WORK}/bad.out" 2>"${WORK}/bad.err"
rc=$?
[[ ${rc} -ne 0 ]] || fail "--top_p=2 succeeded"
[[ ${rc} -ne 124 ]] || fail "--top_p=2 timed out"
grep -q "^error: INVALID_ARGUMENT: .*top_p" "${WORK}/bad.err" ||
  fail "--top_p=2 stderr: $(cat "${WORK}/bad.err")"

# The server is still serving after the bad request.
cli generate --prompt="x" --max_new_tokens=2 >/dev/null 2>"${WORK}/after.err" ||
  fail "generate after a bad request: $(cat "${WORK}/after.err")"

# SIGTERM while a generation streams: the server drains (the stream ends
# normally with every token), then exits 0 within a deadline.
cli generate --prompt="x" --max_new_tokens=1000 --ignore_eos --verbose \
  >"${WORK}/long.out" 2>"${WORK}/long.err" &
gen_pid=$!
for _ in $(seq 1 600); do # until the first text arrives (up to 60 s)
  [[ -s "${WORK}/long.out" ]] && break
  sleep 0.1
done
[[ -s "${WORK}/long.out" ]] || fail "the long generation never streamed"
stop_server
wait "${gen_pid}"
rc=$?
[[ ${rc} -eq 0 ]] ||
  fail "generate across the drain exited ${rc}: $(cat "${WORK}/long.err")"
grep -q "finish_reason=length .*completion_tokens=1000" "${WORK}/long.err" ||
  fail "generate across the drain: $(cat "${WORK}/long.err")"
grep -q "SIGTERM, draining" "${WORK}/server.err" ||
  fail "no drain message from the server"

# With the server gone, a call fails with UNAVAILABLE.
cli health >/dev/null 2>"${WORK}/gone.err"
rc=$?
[[ ${rc} -eq 2 ]] || fail "health against a stopped server exited ${rc}"
grep -q "^error: UNAVAILABLE" "${WORK}/gone.err" ||
  fail "health against a stopped server: $(cat "${WORK}/gone.err")"

echo "PASS"
