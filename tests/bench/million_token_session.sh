#!/usr/bin/env bash
# The million-token session benchmark: feeds a long history into a session,
# pauses it to disk, restarts the server, resumes the session and continues it,
# timing each step. Uses only the server and CLI binaries, so it runs from a
# device bundle as well as from a Bazel build.
#
# Usage:
#   tests/bench/million_token_session.sh [flags] [-- server flags...]
#
#   --server_bin=PATH    deltaserve-server ($DELTASERVE_SERVER; default
#                        .device-bundle/bin/deltaserve-server if present, else
#                        bazel-bin/services/server/deltaserve-server)
#   --cli_bin=PATH       deltaserve-cli ($DELTASERVE_CLI; defaults likewise)
#   --model=DIR          model directory (default: the server's own default,
#                        the embedded demo model, found from --server_cwd)
#   --state_dir=DIR      RocksDB directory; must be missing or empty
#                        (default: LOG_DIR/state)
#   --log_dir=DIR        logs and results (default:
#                        ./million-token-session-YYYYmmdd-HHMMSS)
#   --tokens=N           history tokens fed to the session (default 1000000)
#   --new_tokens=N       tokens generated after the resume (default 32)
#   --piece_tokens=N     token ids per Append piece (default 65536)
#   --seed=S             seed of the random token ids (default 1)
#   --max_token_id=N     token ids are drawn from [0, min(N, vocab_size));
#                        default: the whole vocabulary
#   --listen=HOST:PORT   where the server listens (default 127.0.0.1:0: a free
#                        port, read from the server's first line)
#   --server_cwd=DIR     working directory of the server (default: the current
#                        one; use .device-bundle for the bundle's demo model)
#   --server_flag=FLAG   a flag for the server (repeatable; so is everything
#                        after --), e.g. --server_flag=--device=cuda
#   --gpu_index=I        GPU whose memory nvidia-smi samples (default: the
#                        first of CUDA_VISIBLE_DEVICES, else 0)
#   --ready_timeout=S    seconds a server may take to start serving (900)
#   --stop_timeout=S     seconds a server may take to stop after SIGTERM (300)
#
# Unless the server flags set --kv_cache_tokens, the server gets
# --kv_cache_tokens=TOKENS+NEW_TOKENS+4096 so that the session fits (the
# context limit is the smaller of that and the model's
# max_position_embeddings).
#
# From a device bundle (the caller sets LD_LIBRARY_PATH):
#   LD_LIBRARY_PATH=$PWD/.device-bundle/lib:/usr/local/cuda/lib64 \
#     tests/bench/million_token_session.sh \
#       --server_bin=.device-bundle/bin/deltaserve-server \
#       --cli_bin=.device-bundle/bin/deltaserve-cli \
#       --model=/tmp/qwen35-08b-random --log_dir=$OUT/mts -- --device=cuda
#
# Prints a markdown table (also LOG_DIR/results.md). Exits non-zero, saying
# which step failed, when any step fails.
set -euo pipefail

prog="million_token_session"
die() {
  echo "$prog: error: $*" >&2
  exit 1
}
note() { echo "$prog: $*" >&2; }

# --- flags -------------------------------------------------------------------

server_bin="${DELTASERVE_SERVER:-}"
cli_bin="${DELTASERVE_CLI:-}"
model=""
state_dir=""
log_dir=""
tokens=1000000
new_tokens=32
piece_tokens=65536
seed=1
max_token_id=0
listen="127.0.0.1:0"
server_cwd="$PWD"
gpu_index=""
ready_timeout=900
stop_timeout=300
server_flags=()

while [[ $# -gt 0 ]]; do
  arg="$1"
  shift
  case "$arg" in
    --server_bin=*) server_bin="${arg#*=}" ;;
    --cli_bin=*) cli_bin="${arg#*=}" ;;
    --model=*) model="${arg#*=}" ;;
    --state_dir=*) state_dir="${arg#*=}" ;;
    --log_dir=*) log_dir="${arg#*=}" ;;
    --tokens=*) tokens="${arg#*=}" ;;
    --new_tokens=*) new_tokens="${arg#*=}" ;;
    --piece_tokens=*) piece_tokens="${arg#*=}" ;;
    --seed=*) seed="${arg#*=}" ;;
    --max_token_id=*) max_token_id="${arg#*=}" ;;
    --listen=*) listen="${arg#*=}" ;;
    --server_cwd=*) server_cwd="${arg#*=}" ;;
    --server_flag=*) server_flags+=("${arg#*=}") ;;
    --gpu_index=*) gpu_index="${arg#*=}" ;;
    --ready_timeout=*) ready_timeout="${arg#*=}" ;;
    --stop_timeout=*) stop_timeout="${arg#*=}" ;;
    --)
      server_flags+=("$@")
      break
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument '$arg' (see --help)" ;;
  esac
done

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
for pair in "tokens=$tokens" "new_tokens=$new_tokens" \
  "piece_tokens=$piece_tokens" "seed=$seed" "max_token_id=$max_token_id" \
  "ready_timeout=$ready_timeout" "stop_timeout=$stop_timeout"; do
  is_uint "${pair#*=}" || die "--${pair%%=*} must be a non-negative integer, got '${pair#*=}'"
done
((tokens >= 2)) || die "--tokens must be at least 2"
((new_tokens >= 1)) || die "--new_tokens must be at least 1"
((piece_tokens >= 1)) || die "--piece_tokens must be at least 1"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
pick_bin() {  # $1: name, $2: path under bazel-bin
  local c
  for c in "$PWD/.device-bundle/bin/$1" "$repo_root/.device-bundle/bin/$1" \
    "$PWD/bazel-bin/$2" "$repo_root/bazel-bin/$2"; do
    if [[ -x "$c" ]]; then
      echo "$c"
      return
    fi
  done
}
[[ -n "$server_bin" ]] || server_bin="$(pick_bin deltaserve-server services/server/deltaserve-server)"
[[ -n "$cli_bin" ]] || cli_bin="$(pick_bin deltaserve-cli clients/cli/deltaserve-cli)"
[[ -n "$server_bin" ]] || die "no deltaserve-server found; pass --server_bin=PATH"
[[ -n "$cli_bin" ]] || die "no deltaserve-cli found; pass --cli_bin=PATH"
[[ -x "$server_bin" ]] || die "--server_bin $server_bin is not an executable file"
[[ -x "$cli_bin" ]] || die "--cli_bin $cli_bin is not an executable file"
[[ -d "$server_cwd" ]] || die "--server_cwd $server_cwd is not a directory"
abs_path() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
server_bin="$(abs_path "$server_bin")"
cli_bin="$(abs_path "$cli_bin")"
server_cwd="$(realpath "$server_cwd")"

[[ -n "$log_dir" ]] || log_dir="$PWD/million-token-session-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$log_dir" || die "cannot create --log_dir $log_dir"
log_dir="$(realpath "$log_dir")"
[[ -n "$state_dir" ]] || state_dir="$log_dir/state"
if [[ -e "$state_dir" ]]; then
  [[ -d "$state_dir" ]] || die "--state_dir $state_dir is not a directory"
  [[ -z "$(ls -A "$state_dir")" ]] ||
    die "--state_dir $state_dir is not empty (its size on disk is measured; give a fresh one)"
fi
mkdir -p "$state_dir" || die "cannot create --state_dir $state_dir"
state_dir="$(realpath "$state_dir")"
if [[ -n "$model" ]]; then
  [[ -f "$model/config.json" ]] || die "--model $model has no config.json"
  model="$(realpath "$model")"
fi

has_kv_flag=0
for f in "${server_flags[@]+"${server_flags[@]}"}"; do
  case "$f" in
    --kv_cache_tokens=* | --kv_cache_tokens) has_kv_flag=1 ;;
    --state_dir=* | --state_dir | --listen=* | --listen | --model=* | --model)
      die "give $f as this script's own flag, not as a server flag"
      ;;
  esac
done
server_args=(--listen="$listen" --state_dir="$state_dir")
[[ -n "$model" ]] && server_args+=(--model="$model")
((has_kv_flag)) || server_args+=(--kv_cache_tokens=$((tokens + new_tokens + 4096)))
server_args+=("${server_flags[@]+"${server_flags[@]}"}")

# --- helpers -----------------------------------------------------------------

now() { date +%s.%N; }
# Seconds from $1 to $2, 3 decimals.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# A field of the CLI's one-line JSON session ("num_tokens":123).
json_field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$2"; }

server_pid=""
poller_pid=""
server_addr=""
cleanup() {
  local rc=$?
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  if [[ -n "$poller_pid" ]]; then
    kill "$poller_pid" 2>/dev/null || true
  fi
  if ((rc != 0)); then
    echo "$prog: failed (exit $rc); logs in $log_dir" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs the CLI against the server; stdout to LOG_DIR/$1.out, stderr to
# LOG_DIR/$1.err. Fails the run, showing the error, when the call fails.
cli() {
  local name="$1"
  shift
  if ! "$cli_bin" --server="$server_addr" "$@" >"$log_dir/$name.out" 2>"$log_dir/$name.err"; then
    echo "$prog: step '$name' failed: $(basename "$cli_bin") $*" >&2
    tail -n 20 "$log_dir/$name.err" | cut -c1-400 >&2
    exit 1
  fi
}

# Starts the server (log LOG_DIR/server-$1.log) and waits until it is
# SERVING; sets server_pid, server_addr and load_seconds.
start_server() {
  local tag="$1" log="$log_dir/server-$1.log" t0 deadline line
  note "starting server ($tag): $server_bin ${server_args[*]}"
  t0="$(now)"
  (cd "$server_cwd" && exec "$server_bin" "${server_args[@]}") >"$log" 2>&1 &
  server_pid=$!
  deadline=$((SECONDS + ready_timeout))
  server_addr=""
  # The address: the server's first line says it (needed for port 0).
  while [[ -z "$server_addr" ]]; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      tail -n 20 "$log" >&2
      die "server ($tag) exited before serving; log: $log"
    fi
    line="$(grep -m1 'listening on' "$log" || true)"
    if [[ -n "$line" ]]; then
      server_addr="$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' <<<"$line")"
    elif [[ "${listen##*:}" != "0" ]]; then
      server_addr="$listen"  # a fixed port: the health poll below decides
    fi
    ((SECONDS < deadline)) || die "server ($tag) did not start within ${ready_timeout}s; log: $log"
    [[ -n "$server_addr" ]] || sleep 0.2
  done
  # Serving: a health call that answers SERVING.
  until "$cli_bin" --server="$server_addr" --timeout=5s health >/dev/null 2>&1; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      tail -n 20 "$log" >&2
      die "server ($tag) exited before serving; log: $log"
    fi
    ((SECONDS < deadline)) || die "server ($tag) not SERVING within ${ready_timeout}s; log: $log"
    sleep 0.2
  done
  load_seconds="$(elapsed "$t0" "$(now)")"
  note "server ($tag) serving on $server_addr after ${load_seconds}s"
}

# SIGTERM, then waits for a clean exit; sets stop_seconds.
stop_server() {
  local tag="$1" t0 rc=0 deadline
  t0="$(now)"
  kill -TERM "$server_pid" 2>/dev/null || die "server ($tag) was not running at the stop"
  deadline=$((SECONDS + stop_timeout))
  while kill -0 "$server_pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      kill -KILL "$server_pid" 2>/dev/null || true
      die "server ($tag) did not stop within ${stop_timeout}s of SIGTERM (killed)"
    fi
    sleep 0.1
  done
  wait "$server_pid" || rc=$?
  server_pid=""
  ((rc == 0)) || die "server ($tag) exited with status $rc after SIGTERM; log: $log_dir/server-$tag.log"
  stop_seconds="$(elapsed "$t0" "$(now)")"
}

# Peak of the GPU memory samples taken between two times (MiB), or "".
gpu_peak() {
  [[ -s "$log_dir/gpu_memory.csv" ]] || return 0
  awk -F, -v a="${1:-0}" -v b="${2:-1e18}" \
    '$1 >= a && $1 <= b && $2 ~ /^[0-9]+$/ { if ($2 + 0 > m) m = $2 + 0; n++ }
     END { if (n) print m }' "$log_dir/gpu_memory.csv"
}

# --- run -----------------------------------------------------------------------

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -n) $(uname -srm)"
  echo "server_bin: $server_bin"
  echo "cli_bin: $cli_bin"
  echo "server_cwd: $server_cwd"
  echo "server_args: ${server_args[*]}"
  echo "tokens: $tokens new_tokens: $new_tokens piece_tokens: $piece_tokens seed: $seed"
} >"$log_dir/run.txt"

# GPU memory, sampled every 0.5 s while the run lasts.
if command -v nvidia-smi >/dev/null 2>&1; then
  if [[ -z "$gpu_index" ]]; then
    first="${CUDA_VISIBLE_DEVICES:-0}"
    first="${first%%,*}"
    if is_uint "$first"; then gpu_index="$first"; else gpu_index=0; fi
  fi
  nvidia-smi -i "$gpu_index" --query-gpu=name,memory.total --format=csv,noheader \
    >>"$log_dir/run.txt" 2>&1 || true
  (
    while :; do
      m="$(nvidia-smi -i "$gpu_index" --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n1 | tr -d ' ' || true)"
      echo "$(date +%s.%N),$m"
      sleep 0.5
    done
  ) >"$log_dir/gpu_memory.csv" 2>/dev/null &
  poller_pid=$!
  sleep 1
  gpu_baseline="$(gpu_peak)"
else
  note "no nvidia-smi: GPU memory is not sampled"
fi

start_server first
load1_seconds="$load_seconds"

cli models models
vocab_size="$(awk '/vocab_size:/ { print $2; exit }' "$log_dir/models.out")"
context_limit="$(awk '/context_limit:/ { print $2; exit }' "$log_dir/models.out")"
model_name="$(head -n1 "$log_dir/models.out" | awk '{ print $1 }')"
is_uint "$vocab_size" || die "could not read vocab_size from 'models' (see $log_dir/models.out)"
is_uint "$context_limit" || die "could not read context_limit from 'models' (see $log_dir/models.out)"
((tokens + new_tokens < context_limit)) ||
  die "the server's context limit is $context_limit tokens, too few for $tokens + $new_tokens (raise --kv_cache_tokens or the model's max_position_embeddings)"
id_range="$vocab_size"
if ((max_token_id > 0 && max_token_id < vocab_size)); then id_range="$max_token_id"; fi

# The history as random token ids, in a flag file (a million ids is too long
# for one command-line argument).
ids_file="$log_dir/token_ids.flags"
awk -v n="$tokens" -v r="$id_range" -v s="$seed" 'BEGIN {
  srand(s); printf "--token_ids=";
  for (i = 0; i < n; i++) printf "%s%d", (i ? "," : ""), int(rand() * r);
  printf "\n" }' >"$ids_file" || die "could not write $ids_file"

cli session_create session create
session_id="$(head -n1 "$log_dir/session_create.out")"
[[ -n "$session_id" ]] || die "session create printed no id"
note "session $session_id: appending $tokens token ids (ids in [0, $id_range))"

prefill_start="$(now)"
cli append session append "$session_id" --flagfile="$ids_file" --piece_tokens="$piece_tokens"
prefill_end="$(now)"
prefill_seconds="$(elapsed "$prefill_start" "$prefill_end")"
append_line="$(grep 'appended' "$log_dir/append.err" | tail -n1)"
server_tok_s="$(sed -n 's/.*, \([0-9.]*\) tok\/s$/\1/p' <<<"$append_line")"

cli get_after_append session get "$session_id" --json
j="$(head -n1 "$log_dir/get_after_append.out")"
fed_tokens="$(json_field num_tokens "$j")"
[[ "$fed_tokens" == "$tokens" ]] ||
  die "after the append the session has '$fed_tokens' tokens, expected $tokens"
prefill_tok_s="$(awk -v n="$tokens" -v t="$prefill_seconds" 'BEGIN { printf "%.0f", n / t }')"
gpu_prefill_peak="$(gpu_peak "$prefill_start" "$prefill_end")"

pause_start="$(now)"
cli pause session pause "$session_id" --json
pause_seconds="$(elapsed "$pause_start" "$(now)")"
cli get_after_pause session get "$session_id" --json
j="$(head -n1 "$log_dir/get_after_pause.out")"
state_bytes="$(json_field state_bytes "$j")"
tier_after_pause="$(json_field tier "$j")"
snapshot_seq="$(json_field snapshot_seq "$j")"
[[ "$tier_after_pause" == "disk" ]] ||
  die "after the pause the session is on tier '$tier_after_pause', expected disk"

stop_server first
stop1_seconds="$stop_seconds"
disk_bytes="$(du -sb "$state_dir" | awk '{ print $1 }')"

start_server second
load2_seconds="$load_seconds"
cli get_after_restart session get "$session_id" --json
j="$(head -n1 "$log_dir/get_after_restart.out")"
[[ "$(json_field num_tokens "$j")" == "$tokens" ]] ||
  die "after the restart the session has '$(json_field num_tokens "$j")' tokens, expected $tokens"

resume_start="$(now)"
cli resume session resume "$session_id" --json
resume_seconds="$(elapsed "$resume_start" "$(now)")"
j="$(head -n1 "$log_dir/resume.out")"
tier_after_resume="$(json_field tier "$j")"

continue_start="$(now)"
cli continue generate --session="$session_id" --max_new_tokens="$new_tokens" \
  --ignore_eos --verbose --print_token_ids
continue_end="$(now)"
continue_seconds="$(elapsed "$continue_start" "$continue_end")"
ttft="$(sed -n 's/.*time_to_first_token=\([0-9.]*\)s.*/\1/p' "$log_dir/continue.err" | tail -n1)"
completion_tokens="$(sed -n 's/.*completion_tokens=\([0-9]*\).*/\1/p' "$log_dir/continue.err" | tail -n1)"
final_tokens="$(sed -n 's/.*session_tokens=\([0-9]*\).*/\1/p' "$log_dir/continue.err" | tail -n1)"
[[ "$completion_tokens" == "$new_tokens" ]] ||
  die "the continuation generated '$completion_tokens' tokens, expected $new_tokens (see $log_dir/continue.err)"
[[ "$final_tokens" == "$((tokens + new_tokens))" ]] ||
  die "after the continuation the session has '$final_tokens' tokens, expected $((tokens + new_tokens))"
gpu_resume_peak="$(gpu_peak "$resume_start" "$continue_end")"

stop_server second
final_disk_bytes="$(du -sb "$state_dir" | awk '{ print $1 }')"

gpu_peak_all=""
if [[ -n "$poller_pid" ]]; then
  kill "$poller_pid" 2>/dev/null || true
  wait "$poller_pid" 2>/dev/null || true
  poller_pid=""
  gpu_peak_all="$(gpu_peak)"
fi

# --- report --------------------------------------------------------------------

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
gpu_cell() { if [[ -n "$1" ]]; then echo "$1 MiB"; else echo "n/a"; fi; }
if [[ -n "${gpu_baseline:-}${gpu_peak_all}" ]]; then
  gpu_row="$(gpu_cell "$gpu_peak_all") (before the server: $(gpu_cell "${gpu_baseline:-}"); during prefill: $(gpu_cell "$gpu_prefill_peak"); during resume + continue: $(gpu_cell "$gpu_resume_peak"))"
else
  gpu_row="n/a (no nvidia-smi)"
fi

{
  echo "Model: ${model_name} (${model:-server default}), vocab $vocab_size, context limit $context_limit; server flags: ${server_args[*]}"
  echo
  echo "| metric | value |"
  echo "|---|---:|"
  echo "| tokens fed | $fed_tokens |"
  echo "| prefill time (session append) | ${prefill_seconds} s |"
  echo "| prefill tok/s (client; server's own figure) | $prefill_tok_s (${server_tok_s:-n/a}) |"
  echo "| pause time | ${pause_seconds} s |"
  echo "| stored bytes (session state_bytes; snapshot $snapshot_seq) | $state_bytes ($(mib "$state_bytes")) |"
  echo "| state_dir on disk after pause (du -sb) | $disk_bytes ($(mib "$disk_bytes")) |"
  echo "| server stop after pause (SIGTERM) | ${stop1_seconds} s |"
  echo "| server restart until SERVING | ${load2_seconds} s (first start: ${load1_seconds} s) |"
  echo "| resume time (after restart; tier now ${tier_after_resume}) | ${resume_seconds} s |"
  echo "| continue time ($new_tokens tokens, generate --session) | ${continue_seconds} s |"
  echo "| continue time to first token (server) | ${ttft:-n/a} s |"
  echo "| state_dir on disk at the end | $final_disk_bytes ($(mib "$final_disk_bytes")) |"
  echo "| peak GPU memory (nvidia-smi, every 0.5 s) | $gpu_row |"
} | tee "$log_dir/results.md"
note "logs and results in $log_dir"
