#!/usr/bin/env bash
# Every test: the Rust workspace (the 2-rank MPI tests included, each under
# a time limit), the CUDA backend and NCCL compiled (`cargo check`: its
# gpu-check replaces the CPU one, so it is not the build the tests run),
# then the Python package: a wheel built by maturin, installed
# into a fresh virtual environment with numpy, torch and torchvision from
# PyPI (pip's cache is kept between runs), and pytest.
#
#   bash tools/test.sh            # both
#   PYTHON_TESTS=0 bash tools/test.sh   # Rust only
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace --features mpi
cargo check --workspace --all-targets --features mpi,cuda
[ "${PYTHON_TESTS:-1}" = 0 ] && exit 0
venv=target/py-venv
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "maturin>=1.7,<2" numpy pytest torch torchvision
rm -rf target/wheels
"$venv/bin/maturin" build --release --quiet -m python/Cargo.toml -o target/wheels
"$venv/bin/pip" install -q --no-deps target/wheels/resnet_imagenet-*.whl
"$venv/bin/python" -m pytest -q python/tests
