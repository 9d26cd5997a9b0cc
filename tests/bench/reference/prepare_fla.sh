#!/usr/bin/env bash
# Exports flash-linear-attention (fla: pure Python + Triton) from a bare git mirror into the
# git-ignored folder .ref/fla/ at the repository root, so that hf_fla_bench.py can import it on a
# machine with no network (carry ".ref" with the run).
#
# Usage:
#   tests/bench/reference/prepare_fla.sh [--full] [--rev REV] [MIRROR_GIT_DIR]
#
#   MIRROR_GIT_DIR  a bare git directory of github.com/fla-org/flash-linear-attention. When omitted,
#                   the first match of $MIRROR_ROOT/fla-org+flash-linear-attention*/ (MIRROR_ROOT
#                   defaults to /work/.mirror) that is a git directory, or holds one under repo/,
#                   is used.
#   --rev REV       tree-ish to export (default HEAD).
#   --full          export the whole repository tree instead of only the package (fla/ + LICENSE).
#
# The export is replaced atomically; .ref/fla/REVISION records the commit and its date. If the
# export is larger than MAX_MB (default 60) it falls back to the package-only export, since
# everything carried to the device travels within one 64 MiB limit.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/../../.." && pwd)"
dest="${repo_root}/.ref/fla"
max_mb="${MAX_MB:-60}"
mirror_root="${MIRROR_ROOT:-/work/.mirror}"

full=0
rev="HEAD"
mirror=""
while [ $# -gt 0 ]; do
  case "$1" in
    --full) full=1 ;;
    --rev) shift; rev="${1:?--rev needs a value}" ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "prepare_fla.sh: unknown option $1" >&2; exit 2 ;;
    *) mirror="$1" ;;
  esac
  shift
done

is_git_dir() { git --git-dir="$1" rev-parse --git-dir >/dev/null 2>&1; }

if [ -z "${mirror}" ]; then
  for cand in "${mirror_root}"/fla-org+flash-linear-attention*; do
    [ -d "${cand}" ] || continue
    if is_git_dir "${cand}/repo"; then mirror="${cand}/repo"; break; fi
    if is_git_dir "${cand}"; then mirror="${cand}"; break; fi
  done
fi
if [ -z "${mirror}" ]; then
  echo "prepare_fla.sh: no fla mirror found under ${mirror_root}; pass its git directory" >&2
  exit 1
fi
if ! is_git_dir "${mirror}"; then
  echo "prepare_fla.sh: ${mirror} is not a git directory" >&2
  exit 1
fi

commit="$(git --git-dir="${mirror}" rev-parse --verify "${rev}^{commit}")"
commit_date="$(git --git-dir="${mirror}" show -s --format=%cI "${commit}")"
version="$(git --git-dir="${mirror}" show "${commit}:fla/__init__.py" \
  | sed -n 's/^__version__ *= *["'"'"']\([^"'"'"']*\)["'"'"'].*/\1/p' | head -n1)"

export_tree() {  # $1 = 1 for the whole tree, 0 for the package only
  local tmp="${dest}.tmp.$$"
  rm -rf "${tmp}"
  mkdir -p "${tmp}"
  if [ "$1" = 1 ]; then
    git --git-dir="${mirror}" archive --format=tar "${commit}" | tar -x -C "${tmp}"
  else
    git --git-dir="${mirror}" archive --format=tar "${commit}" fla LICENSE | tar -x -C "${tmp}"
  fi
  printf 'repository: https://github.com/fla-org/flash-linear-attention\ncommit: %s\ndate: %s\nversion: %s\nexport: %s\n' \
    "${commit}" "${commit_date}" "${version:-unknown}" "$([ "$1" = 1 ] && echo full || echo package)" \
    > "${tmp}/REVISION"
  rm -rf "${dest}"
  mkdir -p "$(dirname "${dest}")"
  mv "${tmp}" "${dest}"
}

export_tree "${full}"
size_kb="$(du -sk "${dest}" | cut -f1)"
if [ "${full}" = 1 ] && [ "${size_kb}" -gt $((max_mb * 1024)) ]; then
  echo "prepare_fla.sh: full export is $((size_kb / 1024)) MB (> ${max_mb} MB); exporting the package only"
  export_tree 0
  size_kb="$(du -sk "${dest}" | cut -f1)"
fi

echo "exported fla ${version:-?} (${commit:0:12}, ${commit_date}) to ${dest}: $((size_kb / 1024)) MB, $(find "${dest}" -type f | wc -l) files"

# Sanity check that needs no torch: every module compiles, and the package's __init__ imports
# (it skips fla.layers / fla.models when torch or triton is missing).
if command -v python3 >/dev/null 2>&1; then
  if python3 -m compileall -q -j 0 "${dest}/fla" >/dev/null 2>&1; then
    echo "check: all fla modules byte-compile under $(python3 -V 2>&1)"
  else
    echo "check: some fla modules fail to byte-compile under $(python3 -V 2>&1) (fla needs Python >= 3.10)"
  fi
  find "${dest}" -name __pycache__ -type d -prune -exec rm -rf {} +
  PYTHONDONTWRITEBYTECODE=1 python3 - "${dest}" <<'PY' || true
import importlib.util
import sys

sys.path.insert(0, sys.argv[1])
import fla  # noqa: E402

print(f"check: import fla -> {fla.__version__} from {fla.__file__}")
missing = [name for name in ("torch", "triton", "transformers", "einops", "packaging")
           if importlib.util.find_spec(name) is None]
if missing:
    print("check: not importable here (needed at run time on the device): " + ", ".join(missing))
PY
fi
