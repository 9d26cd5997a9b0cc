#!/bin/bash
# Sessions across server processes, driven by deltaserve-cli: for the demo
# model and the qwen35-tiny reference fixture, a session that is paused, its
# server restarted (a new process on the same state directory), resumed and
# continued yields exactly the greedy tokens of one uninterrupted request;
# so do a fork, a session continued after `session append`, and an export
# imported into another server process with its own state directory. For
# the gated-deltanet-tiny fixture the same export and import go through
# fla's cache layout (--format=fla); qwen35-tiny refuses that format.
# Every wait has a deadline, so the test fails rather than hangs.
set -uo pipefail

readonly RUNFILES="${TEST_SRCDIR:?}/deltaserve"
readonly SERVER="${RUNFILES}/services/server/deltaserve-server"
readonly CLI="${RUNFILES}/clients/cli/deltaserve-cli"
readonly WORK="$(mktemp -d "${TEST_TMPDIR:-/tmp}/session_e2e.XXXXXX")"
readonly CLI_TIMEOUT=60

source "${RUNFILES}/tests/e2e/server_process.sh"

cli() {
  timeout "${CLI_TIMEOUT}" "${CLI}" --server="127.0.0.1:${SERVER_PORT}" "$@"
}

# Greedy ids of a generation: gen OUT ARGS...; prints the comma-separated
# ids of the last line of the CLI's output.
gen() {
  cli generate --temperature=0 --ignore_eos --print_token_ids "$@" \
    >"${WORK}/gen.out" 2>"${WORK}/gen.err" ||
    fail "generate $* failed: $(cat "${WORK}/gen.err")"
  tail -n 1 "${WORK}/gen.out"
}

expect_eq() {  # expect_eq WHAT GOT WANT
  [[ "$2" == "$3" ]] || fail "$1: got '$2', want '$3'"
  echo "ok: $1 ($2)"
}

restart_server() {  # restart_server STATE_DIR MODEL_ARGS...
  stop_server
  rm -f "${WORK}/server.out"
  local state="$1"
  shift
  start_server --threads=1 --state_dir="${state}" "$@"
}

check_model() {  # check_model NAME MODEL_ARGS...
  local name="$1"
  shift
  local state_a="${WORK}/${name}-a" state_b="${WORK}/${name}-b"
  rm -f "${WORK}/server.out"
  start_server --threads=1 --state_dir="${state_a}" "$@"

  # The uninterrupted reference: turn 1, then everything so far plus turn 2.
  local p1="5,17,29,41,53,65,77" p2="9,8,7,6,5"
  local r1 r2
  r1="$(gen --token_ids="${p1}" --max_new_tokens=8)"
  r2="$(gen --token_ids="${p1},${r1},${p2}" --max_new_tokens=8)"

  local id fork appended
  id="$(cli session create)" || fail "session create"
  expect_eq "${name}: session turn 1" \
    "$(gen --session="${id}" --token_ids="${p1}" --max_new_tokens=8)" "${r1}"
  fork="$(cli session fork "${id}")" || fail "session fork"
  cli session export "${id}" --out="${WORK}/${name}.dss" 2>/dev/null ||
    fail "session export"
  # The same history built by appending, then continued with no input.
  appended="$(cli session create)" || fail "session create"
  cli session append "${appended}" --token_ids="${p1},${r1}" \
    2>"${WORK}/append.err" || fail "append: $(cat "${WORK}/append.err")"
  cli session pause "${id}" >"${WORK}/pause.out" || fail "session pause"
  grep -q "^tier: disk" "${WORK}/pause.out" || fail "paused: $(cat "${WORK}/pause.out")"

  # A new server process on the same directory.
  restart_server "${state_a}" "$@"
  cli session resume "${id}" >"${WORK}/resume.out" || fail "session resume"
  grep -q "^tier: device" "${WORK}/resume.out" ||
    fail "resumed: $(cat "${WORK}/resume.out")"
  expect_eq "${name}: turn 2 after pause and restart" \
    "$(gen --session="${id}" --token_ids="${p2}" --max_new_tokens=8)" "${r2}"
  expect_eq "${name}: turn 2 on the fork" \
    "$(gen --session="${fork}" --token_ids="${p2}" --max_new_tokens=8)" "${r2}"
  expect_eq "${name}: turn 2 after append" \
    "$(gen --session="${appended}" --token_ids="${p2}" --max_new_tokens=8)" \
    "${r2}"

  # Another server process with its own directory imports the export.
  restart_server "${state_b}" "$@"
  local imported
  imported="$(cli session import --in="${WORK}/${name}.dss")" ||
    fail "session import"
  [[ "${imported}" =~ ^[0-9a-f]{32}$ ]] || fail "imported id '${imported}'"
  expect_eq "${name}: turn 2 on the import" \
    "$(gen --session="${imported}" --token_ids="${p2}" --max_new_tokens=8)" \
    "${r2}"
  cli session list >"${WORK}/list.out" || fail "session list"
  expect_eq "${name}: sessions in the second server" \
    "$(wc -l <"${WORK}/list.out")" "1"
  stop_server
}

# A session exported in fla's cache layout and imported into another server
# process continues as the uninterrupted request.
check_fla() {  # check_fla NAME MODEL_ARGS...
  local name="$1"
  shift
  rm -f "${WORK}/server.out"
  start_server --threads=1 --state_dir="${WORK}/${name}-a" "$@"
  local p1="5,17,29,41,53,65,77" p2="9,8,7,6,5"
  local r1 r2 id
  r1="$(gen --token_ids="${p1}" --max_new_tokens=8)"
  r2="$(gen --token_ids="${p1},${r1},${p2}" --max_new_tokens=8)"
  id="$(cli session create)" || fail "session create"
  expect_eq "${name}: session turn 1" \
    "$(gen --session="${id}" --token_ids="${p1}" --max_new_tokens=8)" "${r1}"
  cli session export "${id}" --format=fla --out="${WORK}/${name}.safetensors" \
    2>/dev/null || fail "session export --format=fla"
  # A safetensors file: an 8-byte header length, then the JSON header.
  head -c 9 "${WORK}/${name}.safetensors" | tail -c 1 | grep -q "{" ||
    fail "the fla export is not safetensors"
  cli session export "${id}" --format=bogus --out="${WORK}/bogus" \
    2>"${WORK}/bogus.err"
  expect_eq "${name}: --format=bogus exit status" "$?" "1"
  restart_server "${WORK}/${name}-b" "$@"
  local imported
  imported="$(cli session import --format=fla \
    --in="${WORK}/${name}.safetensors")" || fail "session import --format=fla"
  [[ "${imported}" =~ ^[0-9a-f]{32}$ ]] || fail "imported id '${imported}'"
  expect_eq "${name}: turn 2 on the fla import" \
    "$(gen --session="${imported}" --token_ids="${p2}" --max_new_tokens=8)" \
    "${r2}"
  # The same file read as deltaserve's own stream is refused.
  cli session import --in="${WORK}/${name}.safetensors" 2>"${WORK}/imp.err" &&
    fail "an fla file imported as a deltaserve stream"
  grep -q "INVALID_ARGUMENT" "${WORK}/imp.err" || fail "$(cat "${WORK}/imp.err")"
  stop_server
}

check_model demo
check_model qwen35-tiny --model="${RUNFILES}/tests/testdata/qwen35-tiny"
check_fla gated-deltanet-tiny \
  --model="${RUNFILES}/tests/testdata/gated-deltanet-tiny"

# qwen3_5_text sessions have no fla cache layout.
rm -f "${WORK}/server.out"
start_server --threads=1 --state_dir="${WORK}/qwen-fla" \
  --model="${RUNFILES}/tests/testdata/qwen35-tiny"
id="$(cli session create)" || fail "session create"
cli session export "${id}" --format=fla --out="${WORK}/qwen.safetensors" \
  2>"${WORK}/qwen.err" && fail "qwen3_5_text exported in fla's layout"
grep -q "FAILED_PRECONDITION.*qwen3_5_text" "${WORK}/qwen.err" ||
  fail "qwen fla export: $(cat "${WORK}/qwen.err")"
[[ ! -e "${WORK}/qwen.safetensors" ]] || fail "a failed export left a file"
echo "ok: qwen35-tiny refuses --format=fla"
stop_server
echo "PASS"
