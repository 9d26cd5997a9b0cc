#!/bin/bash
# deltaserve-server --device=cuda as a process, driven by deltaserve-cli:
#  - the demo model streams the same greedy text on the GPU as on the CPU;
#  - concurrent greedy requests on the GPU (recorded decode steps, batches
#    padded to a bucket) give each request the text it gets alone;
#  - a GPU session paused to disk, its server restarted, resumed and
#    continued yields exactly what a session continued without the pause
#    yields, and an export imported into a CPU server continues there.
# Skips (passes) when there is no GPU. Every wait has a deadline.
set -uo pipefail

readonly RUNFILES="${TEST_SRCDIR:?}/deltaserve"
readonly SERVER="${RUNFILES}/services/server/deltaserve-server"
readonly CLI="${RUNFILES}/clients/cli/deltaserve-cli"
readonly WORK="$(mktemp -d "${TEST_TMPDIR:-/tmp}/gpu_e2e.XXXXXX")"
readonly CLI_TIMEOUT=120

source "${RUNFILES}/tests/e2e/server_process.sh"

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no GPU: skipped"
  exit 0
fi

cli() {
  timeout "${CLI_TIMEOUT}" "${CLI}" --server="127.0.0.1:${SERVER_PORT}" "$@"
}

gen_ids() {  # gen_ids ARGS...: the comma-separated greedy ids
  cli generate --temperature=0 --ignore_eos --print_token_ids "$@" \
    >"${WORK}/gen.out" 2>"${WORK}/gen.err" ||
    fail "generate $* failed: $(cat "${WORK}/gen.err")"
  tail -n 1 "${WORK}/gen.out"
}

expect_eq() {  # expect_eq WHAT GOT WANT
  [[ "$2" == "$3" ]] || fail "$1: got '$2', want '$3'"
  echo "ok: $1 ($2)"
}

readonly PROMPT="Once upon a time, in a small village by the sea,"

# The CPU's greedy text.
start_server --threads=2
cli generate --prompt="${PROMPT}" --temperature=0 --ignore_eos \
  --max_new_tokens=64 >"${WORK}/cpu.txt" 2>"${WORK}/cpu.err" ||
  fail "CPU generate: $(cat "${WORK}/cpu.err")"
stop_server
rm -f "${WORK}/server.out"

start_server --device=cuda --state_dir="${WORK}/gpu-state"
[[ "${SERVER_LINE}" == *"device cuda"* ]] || fail "not on cuda: ${SERVER_LINE}"
cli generate --prompt="${PROMPT}" --temperature=0 --ignore_eos \
  --max_new_tokens=64 >"${WORK}/gpu.txt" 2>"${WORK}/gpu.err" ||
  fail "GPU generate: $(cat "${WORK}/gpu.err")"
cmp -s "${WORK}/cpu.txt" "${WORK}/gpu.txt" ||
  fail "GPU text differs from the CPU's:
cpu: $(cat "${WORK}/cpu.txt")
gpu: $(cat "${WORK}/gpu.txt")"
echo "ok: the demo model's greedy text is the same on the GPU: $(cat "${WORK}/gpu.txt")"

# Five requests at once, against each alone.
declare -a alone
for i in 1 2 3 4 5; do
  alone[i]="$(gen_ids --token_ids="$((i * 11)),$((i * 7)),9,$((i + 40))" \
    --max_new_tokens=24)"
done
pids=()
for i in 1 2 3 4 5; do
  cli generate --temperature=0 --ignore_eos --print_token_ids \
    --token_ids="$((i * 11)),$((i * 7)),9,$((i + 40))" --max_new_tokens=24 \
    >"${WORK}/par${i}.out" 2>"${WORK}/par${i}.err" &
  pids+=($!)
done
for i in 1 2 3 4 5; do
  wait "${pids[i - 1]}" || fail "concurrent request ${i}: $(cat "${WORK}/par${i}.err")"
  expect_eq "concurrent request ${i}" "$(tail -n 1 "${WORK}/par${i}.out")" \
    "${alone[i]}"
done

# Sessions: A is paused and the server restarted; B goes on without pause.
p1="5,17,29,41,53,65,77"
p2="9,8,7,6,5"
a="$(cli session create)" || fail "session create"
b="$(cli session create)" || fail "session create"
ra1="$(gen_ids --session="${a}" --token_ids="${p1}" --max_new_tokens=8)"
rb1="$(gen_ids --session="${b}" --token_ids="${p1}" --max_new_tokens=8)"
expect_eq "turn 1 of two sessions" "${ra1}" "${rb1}"
rb2="$(gen_ids --session="${b}" --token_ids="${p2}" --max_new_tokens=8)"
cli session pause "${a}" >"${WORK}/pause.out" || fail "session pause"
grep -q "^tier: disk" "${WORK}/pause.out" || fail "paused: $(cat "${WORK}/pause.out")"
stop_server
rm -f "${WORK}/server.out"
start_server --device=cuda --state_dir="${WORK}/gpu-state"
cli session resume "${a}" >"${WORK}/resume.out" || fail "session resume"
grep -q "^tier: device" "${WORK}/resume.out" ||
  fail "resumed: $(cat "${WORK}/resume.out")"
cli session export "${a}" --out="${WORK}/a.dss" 2>/dev/null || fail "export"
ra2="$(gen_ids --session="${a}" --token_ids="${p2}" --max_new_tokens=8)"
expect_eq "turn 2 after pause, restart and resume on the GPU" "${ra2}" "${rb2}"
stop_server
rm -f "${WORK}/server.out"

# The GPU session's export continues on a CPU server.
start_server --threads=2 --state_dir="${WORK}/cpu-state"
imported="$(cli session import --in="${WORK}/a.dss")" || fail "import"
rc="$(gen_ids --session="${imported}" --token_ids="${p2}" --max_new_tokens=8)"
echo "ok: the GPU session continues on the CPU (${rc}; GPU: ${ra2})"
stop_server
echo "PASS"
