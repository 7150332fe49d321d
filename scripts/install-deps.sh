#!/usr/bin/env bash
# Installs the Debian packages lowbit's build needs, only those that are missing (dpkg -s),
# so a warm machine pays nothing. Runs `apt-get update` once, before the first install.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libhwy-dev          # SIMD with dynamic dispatch (Highway 1.0.3)
  libomp-dev          # OpenMP runtime headers (gcc's libgomp is used by g++)
  libcli11-dev        # command line
  libfmt-dev          # formatting
  nlohmann-json3-dev  # JSON output
  libgtest-dev libgmock-dev  # tests
  libbenchmark-dev    # benchmarks
  libopenblas-openmp-dev  # sgemm for the model engine, on lowbit's OpenMP thread pool
  libeigen3-dev       # Cholesky and SVD of the post-training quantization methods
  libpcre2-dev        # GPT-2 pre-tokenizer regex (\p{L}, \p{N})
  libsentencepiece-dev sentencepiece  # SentencePiece .model files; spm_train for test fixtures
  python3-matplotlib  # plots from the CSV/JSON the CLI writes (docs/conventions.md §29)
  libopenmpi-dev openmpi-bin  # data-parallel training and sweeps across ranks (mpirun)
  libsqlite3-dev sqlite3      # the results store (runs database)
  libceres-dev        # nonlinear least squares of the scaling-law fits
  libxgboost-dev      # gradient-boosted PTQ quality predictor
  python3-dev pybind11-dev python3-numpy  # the Python package (import lowbit)
  python3-torch       # lowbit.torch: autograd functions and quantized layers (CPU)
  python3-pytest      # the Python package's tests
)

missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
