#!/bin/bash
# Starts deltaserve-server (its embedded demo model, a free port) and runs the
# Python client's tests (client_test.py) against it with Debian's Python.
# Every wait has a deadline, so the test fails rather than hangs; the server
# is killed on every exit path.
set -uo pipefail

readonly RUNFILES="${TEST_SRCDIR:?}/deltaserve"
readonly SERVER="${RUNFILES}/services/server/deltaserve-server"
readonly PYTHON=/usr/bin/python3
readonly WORK="$(mktemp -d "${TEST_TMPDIR:-/tmp}/python_client.XXXXXX")"

SERVER_PID=""
cleanup() {
  if [[ -n "${SERVER_PID}" ]] && kill -0 "${SERVER_PID}" 2>/dev/null; then
    kill -KILL "${SERVER_PID}" 2>/dev/null
  fi
  exec 3<&- 2>/dev/null
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  if [[ -f "${WORK}/server.err" ]]; then
    echo "--- server stderr:" >&2
    cat "${WORK}/server.err" >&2
  fi
  exit 1
}

"${PYTHON}" -c "import grpc, google.protobuf" ||
  fail "${PYTHON} lacks grpc or protobuf: apt-get install python3-grpcio python3-protobuf"

# The server's stdout goes through a FIFO so that the test blocks (with a
# deadline) on its "listening on" line instead of polling for it.
mkfifo "${WORK}/server.out"
"${SERVER}" --listen=127.0.0.1:0 --threads=1 >"${WORK}/server.out" \
  2>"${WORK}/server.err" &
SERVER_PID=$!
exec 3<"${WORK}/server.out"
if ! read -r -t 90 -u 3 LINE; then
  fail "the server printed no 'listening on' line within 90 s"
fi
echo "server: ${LINE}"
[[ "${LINE}" =~ ^deltaserve-server\ listening\ on\ (127\.0\.0\.1:[0-9]+)\  ]] ||
  fail "unexpected first line: ${LINE}"
readonly ADDRESS="${BASH_REMATCH[1]}"

# Loopback calls must not go through a proxy from the environment.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY grpc_proxy
DELTASERVE_SERVER="${ADDRESS}" \
  DELTASERVE_GOLDEN="${RUNFILES}/engine/model/demo-qwen35/golden.json" \
  DELTASERVE_EXAMPLE="${RUNFILES}/clients/python/examples/generate.py" \
  PYTHONPATH="${RUNFILES}/clients/python" \
  PYTHONDONTWRITEBYTECODE=1 \
  timeout 150 "${PYTHON}" "${RUNFILES}/clients/python/client_test.py" 2>&1
rc=$?
[[ ${rc} -ne 124 ]] || fail "client_test.py did not finish within 150 s"
[[ ${rc} -eq 0 ]] || fail "client_test.py exited ${rc}"
kill -0 "${SERVER_PID}" 2>/dev/null || fail "the server died during the tests"

# A clean shutdown once the clients are done.
kill -TERM "${SERVER_PID}"
if ! timeout 30 tail --pid="${SERVER_PID}" -f /dev/null; then
  fail "the server did not exit within 30 s of SIGTERM"
fi
wait "${SERVER_PID}"
rc=$?
SERVER_PID=""
[[ ${rc} -eq 0 ]] || fail "the server exited with ${rc} after SIGTERM"
echo "PASS"
