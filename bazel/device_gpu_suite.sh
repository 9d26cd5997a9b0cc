#!/usr/bin/env bash
# Bundles every GPU test (tests tagged gpu), every CUDA benchmark (binaries
# under //kernels/cuda named *_bench, and //tests/bench:model_bench), the
# server and the CLI into .device-bundle/, with a script that runs the tests
# and the benchmarks (model_bench on both reference shapes) on the GPU
# machine in one call:
#
#   here:        bazel/device_gpu_suite.sh [--no-bench] [--no-server]
#   GPU machine: tar -xJf .device-pack/bundle.tar.xz &&
#                .device-bundle/run_all.sh [LOG_DIR]
#                (from the repo root, .device-pack carried; LOG_DIR defaults
#                to $OUT or /tmp)
#
# The bundle is also packed, xz-compressed, into .device-pack/bundle.tar.xz
# (about 7 MB instead of 50: OpenBLAS alone is 36 MB), which is what to carry
# when the working tree and the bundle together exceed the transfer limit.
# run_all.sh runs each test and benchmark with its output in LOG_DIR/NAME.log,
# prints a PASS/FAIL line per program and a summary, and exits non-zero when
# any test failed. Needs a CUDA toolkit here (the programs exist only then).
set -euo pipefail
cd "$(dirname "$0")/.."

bench=1
server=1
for arg in "$@"; do
  case "$arg" in
    --no-bench) bench=0 ;;
    # Leaves out the server, the CLI and the tests that start them: the pack
    # is then a fraction of the size (no gRPC, RocksDB or ICU libraries), for
    # when the working tree and the full pack exceed the transfer limit.
    --no-server) server=0 ;;
    *)
      echo "device_gpu_suite: unknown argument $arg" >&2
      exit 1
      ;;
  esac
done

mapfile -t tests < <(bazel query 'attr(tags, "\bgpu\b", tests(//...))' 2>/dev/null)
if [[ $server -eq 0 ]]; then
  mapfile -t tests < <(printf '%s\n' "${tests[@]}" | grep -v -E '^//(tests/e2e|services)[:/]')
fi
benches=()
if [[ $bench -eq 1 ]]; then
  mapfile -t benches < <(bazel query 'kind("cc_binary", //kernels/cuda/...)' \
    2>/dev/null | grep -E '_bench$' || true)
fi
[[ ${#tests[@]} -gt 0 ]] || {
  echo "device_gpu_suite: no gpu tests (is a CUDA toolkit installed?)" >&2
  exit 1
}
extra=(//tests/bench:model_bench)
if [[ $server -eq 1 ]]; then
  extra+=(//services/server:deltaserve-server //clients/cli:deltaserve-cli)
fi
bazel/device_bundle.sh "${tests[@]}" "${benches[@]}" "${extra[@]}"

names() { for t in "$@"; do echo "${t##*:}"; done; }
{
  echo '#!/usr/bin/env bash'
  echo '# Runs the bundled GPU tests, then the benchmarks; see'
  echo '# bazel/device_gpu_suite.sh.'
  echo 'set -uo pipefail'
  echo 'here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"'
  echo 'logs="${1:-${OUT:-/tmp}}"'
  echo 'mkdir -p "$logs"'
  echo "tests=($(names "${tests[@]}" | tr '\n' ' '))"
  echo "benches=($(names "${benches[@]}" | tr '\n' ' '))"
  cat <<'EOS'
# Data files left out of the pack because the working tree beside it has
# them (see the packing below): link them back in.
if [[ -f "$here/from_tree.txt" ]]; then
  while IFS= read -r rel; do
    [[ -e "$here/$rel" ]] || ln -s "$here/../$rel" "$here/$rel"
  done <"$here/from_tree.txt"
fi
failed=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for t in "${tests[@]}"; do
  start=$SECONDS
  if "$here/run.sh" "$t" >"$logs/$t.log" 2>&1; then
    echo "PASS $t ($((SECONDS - start)) s)"
  else
    echo "FAIL $t ($((SECONDS - start)) s)"
    tail -n 30 "$logs/$t.log"
    failed=$((failed + 1))
  fi
  grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$logs/$t.log" || true
done
for b in "${benches[@]}"; do
  echo "=== $b"
  "$here/run.sh" "$b" 2>&1 | tee "$logs/$b.log"
done
if [[ ${#benches[@]} -gt 0 ]]; then
  # Whole models of the two reference shapes (tests/bench/RESULTS.md).
  for shape in deltanet-1.3b qwen3.5-0.8b; do
    echo "=== model_bench --shape=$shape"
    "$here/run.sh" model_bench --shape="$shape" 2>&1 |
      tee "$logs/model_bench_$shape.log"
  done
fi
echo "gpu tests: ${#tests[@]}, failed: $failed"
exit $((failed > 0))
EOS
} >.device-bundle/run_all.sh
chmod 0755 .device-bundle/run_all.sh
# Bundled data files that equal a tracked file of the working tree (test
# models, fixtures) are not packed: the tree travels with the pack, and
# run_all.sh links them back, which keeps tree and pack under the transfer
# limit.
: >.device-bundle/from_tree.txt
exclude=()
while IFS= read -r -d '' f; do
  rel="${f#.device-bundle/}"
  if git ls-files --error-unmatch -- "$rel" >/dev/null 2>&1 &&
    cmp -s "$f" "$rel"; then
    echo "$rel" >>.device-bundle/from_tree.txt
    exclude+=(--exclude="$f")
  fi
done < <(find .device-bundle -type f -size +64k -not -path '*/lib/*' \
  -not -path '*/bin/*' -print0)
mkdir -p .device-pack
tar -cJf .device-pack/bundle.tar.xz "${exclude[@]}" .device-bundle
echo "packed: .device-pack/bundle.tar.xz ($(du -h .device-pack/bundle.tar.xz | cut -f1))"
echo "on the GPU machine: tar -xJf .device-pack/bundle.tar.xz && .device-bundle/run_all.sh"
