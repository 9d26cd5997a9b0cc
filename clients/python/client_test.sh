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

source "${RUNFILES}/tests/e2e/server_process.sh"

"${PYTHON}" -c "import grpc, google.protobuf" ||
  fail "${PYTHON} lacks grpc or protobuf: apt-get install python3-grpcio python3-protobuf"

start_server --threads=1
readonly ADDRESS="127.0.0.1:${SERVER_PORT}"

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
# A clean shutdown once the clients are done.
stop_server
echo "PASS"
