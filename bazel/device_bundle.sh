#!/usr/bin/env bash
# Builds Bazel binaries here and gathers them, with the shared libraries and
# runfiles data they need, into .device-bundle/ so they can run on the GPU
# machine (Ubuntu 24.04, CUDA 13 at /usr/local/cuda, driver 580), which has
# none of this repository's Debian packages.
#
# Usage (from anywhere in the repository):
#   bazel/device_bundle.sh [--append] //kernels/cuda:gated_delta_rule_step_test \
#       //kernels/cuda:gdr_step_bench
#
# The bundle is rebuilt from scratch unless --append is given. Layout:
#   .device-bundle/bin/NAME      each target's binary (debug info stripped)
#   .device-bundle/lib/          the non-system shared libraries they load
#   .device-bundle/<path>        runfiles data at its workspace-relative path
#                                (e.g. engine/model/demo-qwen35), so binaries
#                                that look for data under the working
#                                directory find it
#   .device-bundle/run.sh        runs bin/NAME with the library path set
#
# On the device machine, from the repository root with .device-bundle carried
# along (it is git-ignored):
#   cd .device-bundle && LD_LIBRARY_PATH=$PWD/lib:/usr/local/cuda/lib64 bin/NAME
# or, equivalently:
#   .device-bundle/run.sh NAME [args...]
#
# Which libraries are left out: the C runtime (libc, libm, libdl, librt,
# libpthread, ld-linux), which must match the device's own loader;
# libstdc++ and libgcc_s, because the device's are newer and backward
# compatible while an older copy first on LD_LIBRARY_PATH would shadow them
# for CUDA's libraries too (set BUNDLE_LIBSTDCXX=1 to include them anyway);
# and the CUDA libraries (libcuda, libcudart, libcublas*, libnccl and anything
# else under /usr/local/cuda), which come with the device's driver and
# toolkit. Everything else (Abseil, gRPC, protobuf, RocksDB, OpenBLAS,
# gfortran, re2, c-ares, OpenSSL, gtest/gmock, Bazel's own _solib libraries,
# ...) is copied.
set -euo pipefail

die() {
  echo "device_bundle: $*" >&2
  exit 1
}

append=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --append) append=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d'
      exit 0
      ;;
    -*) die "unknown option $arg" ;;
    *) targets+=("$arg") ;;
  esac
done
[[ ${#targets[@]} -gt 0 ]] || die "usage: $0 [--append] //pkg:target..."

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bundle="${DEVICE_BUNDLE_DIR:-$root/.device-bundle}"
workspace_name="deltaserve"

bazel build "${targets[@]}"
bazel_bin="$(bazel info bazel-bin 2>/dev/null)"

if [[ $append -eq 0 ]]; then
  rm -rf "$bundle"
fi
mkdir -p "$bundle/bin" "$bundle/lib"

# Whether a library (soname and resolved path) comes from the device itself.
is_device_library() {
  local name="$1" path="$2"
  case "$path" in
    /usr/local/cuda/* | /usr/local/cuda-*/*) return 0 ;;
  esac
  case "$name" in
    linux-vdso.so* | ld-linux*.so* | libc.so* | libm.so* | libdl.so* | \
      librt.so* | libpthread.so* | libresolv.so* | libutil.so* | \
      libcuda.so* | libcudart.so* | libcublas*.so* | libnccl.so* | \
      libnvidia-*.so*)
      return 0
      ;;
    libstdc++.so* | libgcc_s.so*)
      [[ "${BUNDLE_LIBSTDCXX:-0}" == 1 ]] && return 1
      return 0
      ;;
  esac
  return 1
}

is_elf() {
  [[ "$(od -An -tx1 -N4 "$1" 2>/dev/null | tr -d ' \n')" == "7f454c46" ]]
}

# Copies the libraries that ELF file $1 loads (transitively: ldd resolves the
# whole closure) into lib/.
copy_libraries() {
  local elf="$1" line name path
  while IFS= read -r line; do
    line="${line#"${line%%[![:space:]]*}"}"
    [[ -n "$line" ]] || continue
    if [[ "$line" == *"=> not found"* ]]; then
      die "$elf needs ${line%% *}, which is not found here"
    fi
    if [[ "$line" == *" => "* ]]; then
      name="${line%% => *}"
      path="${line#* => }"
      path="${path% (0x*}"
    else
      # "/lib64/ld-linux-x86-64.so.2 (0x...)" or "linux-vdso.so.1 (0x...)".
      path="${line% (0x*}"
      name="$(basename "$path")"
    fi
    [[ -n "$path" && -e "$path" ]] || continue
    is_device_library "$name" "$path" && continue
    if [[ ! -e "$bundle/lib/$name" ]]; then
      install -m 0755 "$path" "$bundle/lib/$name"
      strip --strip-unneeded "$bundle/lib/$name" 2>/dev/null || true
    fi
  done < <(ldd "$elf")
}

for target in "${targets[@]}"; do
  label="${target#@${workspace_name}}"
  [[ "$label" == //* ]] || die "$target: give an absolute label (//pkg:name)"
  label="${label#//}"
  if [[ "$label" == *:* ]]; then
    pkg="${label%%:*}"
    name="${label#*:}"
  else
    pkg="$label"
    name="${label##*/}"
  fi
  binary="$bazel_bin/${pkg:+$pkg/}$name"
  [[ -f "$binary" ]] || die "$target: no binary at $binary"
  if is_elf "$binary"; then
    install -m 0755 "$binary" "$bundle/bin/$name"
    strip --strip-debug "$bundle/bin/$name"
    copy_libraries "$binary"
  elif [[ "$(head -c 2 "$binary")" == "#!" ]]; then
    # A script (sh_test): it finds its data through TEST_SRCDIR, which
    # run.sh points at the bundle.
    install -m 0755 "$binary" "$bundle/bin/$name"
  else
    die "$target: $binary is neither an ELF executable nor a script"
  fi

  # Runfiles data of this workspace, at workspace-relative paths. Shared
  # libraries there are covered by ldd; executables there (e.g. a server an
  # end-to-end test starts) are copied with their libraries.
  runfiles="$binary.runfiles/$workspace_name"
  [[ -d "$runfiles" ]] || continue
  while IFS= read -r -d '' file; do
    rel="${file#"$runfiles"/}"
    case "$rel" in
      _solib_*/* | *.so | *.so.*) continue ;;
      "${pkg:+$pkg/}$name") continue ;;
    esac
    mkdir -p "$bundle/$(dirname "$rel")"
    if is_elf "$file"; then
      install -m 0755 "$file" "$bundle/$rel"
      strip --strip-debug "$bundle/$rel" 2>/dev/null || true
      copy_libraries "$file"
    else
      install -m 0644 "$file" "$bundle/$rel"
    fi
  done < <(find -L "$runfiles" -type f -print0)
done

cat >"$bundle/run.sh" <<'EOF'
#!/usr/bin/env bash
# Runs bin/NAME from this bundle with its libraries: run.sh NAME [args...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="$1"
shift
cd "$here"
export LD_LIBRARY_PATH="$here/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Scripts (shell tests) find the workspace's files under
# $TEST_SRCDIR/deltaserve: the bundle itself.
mkdir -p "$here/.srcdir"
ln -sfn "$here" "$here/.srcdir/deltaserve"
export TEST_SRCDIR="$here/.srcdir"
export TEST_TMPDIR="${TEST_TMPDIR:-$(mktemp -d)}"
exec "bin/$name" "$@"
EOF
chmod 0755 "$bundle/run.sh"

echo "device bundle: $bundle"
echo "  binaries: $(ls "$bundle/bin" | tr '\n' ' ')"
echo "  libraries: $(ls "$bundle/lib" | wc -l) ($(du -sh "$bundle/lib" | cut -f1))"
echo "  size: $(du -sh "$bundle" | cut -f1) ($(du -sb "$bundle" | cut -f1) bytes)"
