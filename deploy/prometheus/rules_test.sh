#!/bin/bash
# Checks deploy/prometheus with Prometheus's own tool: the alerting rules
# (promtool check rules), their unit tests (promtool test rules) and the
# sample configuration (promtool check config, which also loads the rules).
set -uo pipefail

readonly RUNFILES="${TEST_SRCDIR:?}/deltaserve"
readonly PROMTOOL="${PROMTOOL:-promtool}"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

command -v "${PROMTOOL}" >/dev/null ||
  fail "no ${PROMTOOL}: run bazel/install_deps.sh (Debian package prometheus)"
"${PROMTOOL}" --version 2>&1 | head -n 1
cd "${RUNFILES}/deploy/prometheus" || fail "no deploy/prometheus in the runfiles"
"${PROMTOOL}" check rules alerts.yml || fail "promtool check rules alerts.yml"
"${PROMTOOL}" test rules alerts_test.yml || fail "promtool test rules alerts_test.yml"
"${PROMTOOL}" check config prometheus.yml || fail "promtool check config prometheus.yml"
echo "PASS"
