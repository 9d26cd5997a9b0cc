#!/usr/bin/env bash
# Installs every Debian 12 package that building, serving and testing
# deltaserve needs. Idempotent: installs only what is missing. Runs apt-get as
# root, or through sudo when not root.
set -euo pipefail

PACKAGES=(
  bazel-bootstrap
  g++
  clang-format
  libgrpc++-dev
  libprotobuf-dev
  protobuf-compiler
  protobuf-compiler-grpc
  python3-grpcio
  python3-protobuf
  libabsl-dev
  librocksdb-dev
  prometheus-cpp-dev
  nlohmann-json3-dev
  libopenblas-dev
  libre2-dev
  libicu-dev
  libssl-dev
  libc-ares-dev
  zlib1g-dev
  libgtest-dev
  libgmock-dev
  libbenchmark-dev
  coreutils
  procps
  python3-yaml
  prometheus
)

# kubectl renders the Kubernetes manifests (deploy/k8s). Debian 12 packages
# it as kubernetes-client; a kubectl installed another way (such as the
# kubectl package of Kubernetes' own repository, which conflicts with
# kubernetes-client) serves as well.
if ! command -v kubectl >/dev/null 2>&1; then
  PACKAGES+=(kubernetes-client)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo); fi
echo "install_deps: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
