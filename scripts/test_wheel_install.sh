#!/usr/bin/env bash
# Install a bertfast wheel into a fresh virtual environment and smoke-test it from a directory
# outside the checkout (so the checkout's bertfast cannot be what gets imported).
#
#   scripts/test_wheel_install.sh PYTHON WHEEL
#
# PYTHON is an interpreter whose torch the fresh venv borrows: a .pth file puts that torch's
# site-packages on the new venv's path. Installing torch again would cost minutes and gigabytes;
# borrowing it still tests the wheel's own files, its torch requirement (pip resolves it
# against the borrowed torch, with no index) and its loading outside the source tree.
set -euo pipefail
PYTHON=$1
WHEEL=$(realpath "$2")
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --without-pip: the venv's own (old, bundled) setuptools would shadow the borrowed one that
# torch requires; PYTHON's pip installs into it instead (pip --python).
"$PYTHON" -m venv --without-pip "$work/venv"
torch_site=$("$PYTHON" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
venv_site=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$torch_site" > "$venv_site/borrowed_torch.pth"
"$PYTHON" -m pip --python "$work/venv/bin/python" install --quiet --no-index "$WHEEL"
cd "$work"
"$work/venv/bin/python" "$repo/scripts/smoke_test_wheel.py" \
    --declared-from "$repo/csrc/bertfast.cpp" --not-under "$repo"
