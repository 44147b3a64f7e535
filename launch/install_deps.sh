#!/usr/bin/env bash
# Installs every build and test dependency of cadtrain from Debian 12 packages.
# Idempotent: when everything is present it prints one line and exits 0.
# Usage: launch/install_deps.sh [--without-torch]
# PyTorch (python3-torch) is installed by default: the test suite's parity tests need it, and the
# README's test command must pass on a fresh machine. --without-torch leaves it out (about 1 GB);
# the torch_parity_* tests then fail, saying so. (--with-torch, the old opt-in, is accepted.)
set -euo pipefail

packages=(
  build-essential cmake pkg-config ninja-build
  libopenmpi-dev openmpi-bin
  libprotobuf-dev protobuf-compiler
  libhdf5-dev
  libopenblas-openmp-dev libopenblas0-openmp
  libgtest-dev libgmock-dev libbenchmark-dev
  libsentencepiece-dev sentencepiece
  libcli11-dev nlohmann-json3-dev libfmt-dev
  python3 python3-numpy python3-h5py
  gnuplot-nox
  clang-14 libclang-rt-14-dev
)
case "${1:-}" in
  "" | --with-torch) packages+=(python3-torch) ;;
  --without-torch) ;;
  *) echo "install_deps: unknown option '$1' (usage: launch/install_deps.sh [--without-torch])" >&2; exit 1 ;;
esac

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install_deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
echo "install_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_deps: done"
