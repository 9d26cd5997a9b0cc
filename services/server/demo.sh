#!/usr/bin/env bash
# The main job: builds the server and the CLI, starts deltaserve-server with
# the embedded demo model on a free local port, streams a generation from the
# CLI, then stops the server. Extra arguments go to the CLI's generate
# command (e.g. --prompt="class " --max_new_tokens=100).
# With DELTASERVE_KEEP_SERVING=1 the server keeps running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."

bazel build //services/server:deltaserve-server //clients/cli:deltaserve-cli
bin="$(bazel info bazel-bin 2>/dev/null)"

coproc SERVER { exec "$bin/services/server/deltaserve-server" --listen=127.0.0.1:0; }
server_pid=$SERVER_PID
trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true' EXIT

# The server prints one line once it is serving.
if ! read -t 120 -r line <&"${SERVER[0]}"; then
  echo "demo: the server did not start" >&2
  exit 1
fi
echo "$line"
addr="$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' <<<"$line")"

prompt_args=(--prompt="import os

def ")
for a in "$@"; do
  case "$a" in --prompt=*) prompt_args=() ;; esac
done
echo "--- streamed generation ---"
"$bin/clients/cli/deltaserve-cli" --server="$addr" generate \
  "${prompt_args[@]}" --max_new_tokens=64 "$@"
echo
echo "---"
if [ "${DELTASERVE_KEEP_SERVING:-0}" = "1" ]; then
  echo "server still running on $addr; Ctrl-C to stop"
  wait "$server_pid"
fi
