#!/bin/bash
# Renders every kustomization under deploy/k8s with `kubectl kustomize` and
# checks the invariants listed in render_test.py against the built
# deltaserve-server's flags, deploy/docker/Dockerfile and
# deploy/prometheus/alerts.yml. KUBECTL (--test_env=KUBECTL=/path) picks
# another kubectl, e.g. Debian's kubernetes-client (kubectl 1.20, kustomize
# 2.0.3), to check that older kustomize renders the same manifests.
set -uo pipefail

readonly RUNFILES="${TEST_SRCDIR:?}/deltaserve"
readonly PYTHON=/usr/bin/python3
readonly KUBECTL="${KUBECTL:-kubectl}"
readonly WORK="$(mktemp -d "${TEST_TMPDIR:-/tmp}/render_test.XXXXXX")"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

command -v "${KUBECTL}" >/dev/null ||
  fail "no ${KUBECTL}: run bazel/install_deps.sh (kubectl or kubernetes-client)"
"${PYTHON}" -c "import yaml" || fail "${PYTHON} lacks yaml: apt-get install python3-yaml"

# kustomize refuses to load files from outside a kustomization's directory,
# and runfiles are symbolic links into the source tree: render a copy.
cp -RL "${RUNFILES}/deploy/k8s" "${WORK}/k8s" || fail "cannot copy deploy/k8s"
rm -f "${WORK}/k8s/"*.sh "${WORK}/k8s/"*.py

exec "${PYTHON}" "${RUNFILES}/deploy/k8s/render_test.py" \
  --kubectl="$(command -v "${KUBECTL}")" \
  --k8s_dir="${WORK}/k8s" \
  --server="${RUNFILES}/services/server/deltaserve-server" \
  --dockerfile="${RUNFILES}/deploy/docker/Dockerfile" \
  --alerts="${RUNFILES}/deploy/prometheus/alerts.yml"
