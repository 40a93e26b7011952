#!/usr/bin/env bash
# Builds dfdx's CUDA path (`--features dfdx-cuda`) on a machine without a GPU or a CUDA install,
# from CUDA 13.0 pip wheels and Debian's libcuda1 (only linked against):
#
#   bash tools/cuda/build.sh [cargo build args...]   # default: --bin gpu-check --bin train-resnet
#
# Toolkit goes to target/cuda-toolkit (CUDA_ROOT), the build to target/cuda.
# dfdx's build script compiles its kernels with nvcc for the compute capability
# nvidia-smi reports; tools/cuda/fake-nvidia-smi answers 9.0 (H100).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
root=$repo/target/cuda-toolkit
wheels=$root/wheels
if [ ! -x "$root/bin/nvcc" ]; then
  mkdir -p "$wheels"
  pip download --no-deps -d "$wheels" \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-nvrtc==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" \
    "nvidia-cublas==13.0.*"
  rm -rf "$root/unpacked" && mkdir -p "$root/unpacked"
  for w in "$wheels"/*.whl; do python3 -m zipfile -e "$w" "$root/unpacked/"; done
  cu=$root/unpacked/nvidia/cu13
  chmod +x "$cu"/bin/* "$cu"/nvvm/bin/* || true
  for d in bin include lib nvvm; do ln -sfn "$cu/$d" "$root/$d"; done
  ln -sfn "$cu/lib" "$root/lib64"
  # libcuda: Debian's non-free libcuda1, fetched with a private source list (no system change).
  apt=$root/apt && mkdir -p "$apt/parts" "$apt/lists/partial"
  cat > "$apt/parts/nonfree.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  aptopts=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$apt/parts" -o Dir::State::Lists="$apt/lists")
  apt-get "${aptopts[@]}" update >/dev/null
  (cd "$apt" && apt-get "${aptopts[@]}" download libcuda1)
  dpkg-deb -x "$apt"/libcuda1_*.deb "$apt/x"
  so=$(find "$apt/x" -name 'libcuda.so.*' -type f | head -1)
  mkdir -p "$root/stubs" && ln -sfn "$so" "$root/stubs/libcuda.so" && ln -sfn "$so" "$root/stubs/libcuda.so.1"
fi
# The wheels ship only versioned libraries (libcublas.so.13); the linker wants libcublas.so.
for l in nvrtc cublas cublasLt cudart; do
  [ -e "$root/lib/lib$l.so.13" ] && ln -sfn "$root/lib/lib$l.so.13" "$root/stubs/lib$l.so"
done
export CUDA_ROOT=$root
export PATH=$root/bin:$repo/tools/cuda/fake-nvidia-smi:$PATH
export LIBRARY_PATH=$root/stubs:$root/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$root/stubs -L native=$root/lib"
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--bin gpu-check --bin train-resnet)
cd "$repo"
cargo build --release --features dfdx-cuda --target-dir target/cuda "${args[@]}"
