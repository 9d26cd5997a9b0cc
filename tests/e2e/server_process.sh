# Sourced by shell tests that run deltaserve-server as a process.
#
# Needs SERVER (the binary) and WORK (a scratch directory). Provides:
#   fail MESSAGE...        prints the message and the server's stderr, exits 1
#   start_server ARGS...   starts the server on 127.0.0.1 port 0 with ARGS and
#                          waits (with a deadline) for its "listening on"
#                          line; sets SERVER_PID, SERVER_LINE, SERVER_PORT
#   stop_server            SIGTERM, then checks a clean exit within 30 s
# The server is killed on every exit path.

SERVER_PID=""

cleanup_server() {
  if [[ -n "${SERVER_PID}" ]] && kill -0 "${SERVER_PID}" 2>/dev/null; then
    kill -KILL "${SERVER_PID}" 2>/dev/null
  fi
  exec 3<&- 2>/dev/null
}
trap cleanup_server EXIT

fail() {
  echo "FAIL: $*" >&2
  if [[ -f "${WORK}/server.err" ]]; then
    echo "--- server stderr:" >&2
    cat "${WORK}/server.err" >&2
  fi
  exit 1
}

start_server() {
  # The server's stdout goes through a FIFO so that the test blocks (with a
  # deadline) on its "listening on" line instead of polling for it.
  mkfifo "${WORK}/server.out"
  "${SERVER}" --listen=127.0.0.1:0 --state_dir="${WORK}/state" "$@" \
    >"${WORK}/server.out" \
    2>"${WORK}/server.err" &
  SERVER_PID=$!
  exec 3<"${WORK}/server.out"
  if ! read -r -t 120 -u 3 SERVER_LINE; then
    fail "the server printed no 'listening on' line within 120 s"
  fi
  echo "server: ${SERVER_LINE}"
  [[ "${SERVER_LINE}" =~ ^deltaserve-server\ listening\ on\ 127\.0\.0\.1:([0-9]+)\  ]] ||
    fail "unexpected first line: ${SERVER_LINE}"
  SERVER_PORT="${BASH_REMATCH[1]}"
  [[ "${SERVER_PORT}" -gt 0 ]] || fail "port ${SERVER_PORT}"
}

stop_server() {
  kill -0 "${SERVER_PID}" 2>/dev/null || fail "the server died"
  kill -TERM "${SERVER_PID}"
  if ! timeout 30 tail --pid="${SERVER_PID}" -f /dev/null; then
    fail "the server did not exit within 30 s of SIGTERM"
  fi
  wait "${SERVER_PID}"
  local rc=$?
  SERVER_PID=""
  [[ ${rc} -eq 0 ]] || fail "the server exited with ${rc} after SIGTERM"
}
