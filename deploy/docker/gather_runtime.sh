#!/usr/bin/env bash
# Gathers what the runtime image needs from a Bazel build of the server and
# the CLI (run from the repository root after `bazel build
# //services/server:deltaserve-server //clients/cli:deltaserve-cli`):
#
#   deploy/docker/gather_runtime.sh OUT
#
#   OUT/opt/deltaserve/bin/deltaserve-server, deltaserve-cli  (debug info
#       stripped), with the server's runfiles beside it (the embedded demo
#       model it serves when no --model is given)
#   OUT/opt/deltaserve/lib/   shared libraries that no Debian package provides
#       (the CUDA runtime and cuBLAS of a CUDA build)
#   OUT/packages.txt          the Debian packages that provide the other
#       shared libraries the binaries load, for apt-get install
set -euo pipefail

die() {
  echo "gather_runtime: $*" >&2
  exit 1
}

[[ $# -eq 1 ]] || die "usage: $0 OUT"
out="$1"
bin="$(bazel info bazel-bin 2>/dev/null)"
server="$bin/services/server/deltaserve-server"
cli="$bin/clients/cli/deltaserve-cli"
[[ -x "$server" && -x "$cli" ]] || die "build the server and the CLI first"

mkdir -p "$out/opt/deltaserve/bin" "$out/opt/deltaserve/lib"
for b in "$server" "$cli"; do
  install -m 0755 "$b" "$out/opt/deltaserve/bin/"
  strip --strip-debug "$out/opt/deltaserve/bin/$(basename "$b")"
done
# The server finds the demo model in its runfiles (see
# services/server/main.cc); copy them without the binary's second copy.
cp -RL "$server.runfiles" "$out/opt/deltaserve/bin/"
rm -f "$out/opt/deltaserve/bin/deltaserve-server.runfiles/deltaserve/services/server/deltaserve-server"

# The package that owns a library, trying the path as ldd printed it, its
# resolved path, and both again with and without the /usr prefix (Debian 12
# merges /lib into /usr/lib, while dpkg records each file where its package
# put it).
owner() {
  local candidates=("$1" "$(readlink -f "$1")") p q
  for p in "${candidates[@]}"; do
    for q in "$p" "${p#/usr}" "/usr$p"; do
      dpkg-query -S "$q" 2>/dev/null | head -n 1 | cut -d: -f1 && return 0
    done
  done
  return 1
}

: >"$out/packages.txt.all"
for b in "$server" "$cli"; do
  while read -r name arrow path _; do
    [[ "$arrow" == "=>" && -e "$path" ]] || continue
    if pkg="$(owner "$path")" && [[ -n "$pkg" ]]; then
      echo "$pkg" >>"$out/packages.txt.all"
    else
      install -m 0644 "$(readlink -f "$path")" "$out/opt/deltaserve/lib/$name"
    fi
  done < <(ldd "$b")
  if ldd "$b" | grep -q "not found"; then
    die "$b needs libraries that are not found: $(ldd "$b" | grep "not found")"
  fi
done
sort -u "$out/packages.txt.all" >"$out/packages.txt"
rm "$out/packages.txt.all"
echo "gather_runtime: $(wc -l <"$out/packages.txt") packages," \
  "$(ls "$out/opt/deltaserve/lib" | wc -l) libraries without a package"
