#!/usr/bin/env bash
# Install mmcv 2.1.0 with its compiled ops into the environment of PYTHON (default: .venv/bin/python,
# else python3), built against the torch already installed there.
#
# mmcv 2.1.0 is the release mmdet 3.3.0 and mmsegmentation 1.2.2 accept; PyPI has no wheel of it for
# current torch, and its setup.py compiles with -std=c++14/17 while torch >= 2.10's headers need C++20.
# So this script, in order:
#   1. does nothing when mmcv 2.1.0 with working ops is already installed;
#   2. installs a matching wheel from $ZOO_WHEELHOUSE (a folder, e.g. CI's ../shared/wheels) or from
#      its own cache ($ZOO_CACHE/wheels/torch-<version>-<cpu|cuda>/) and keeps it if its ops load
#      beside this torch;
#   3. otherwise downloads the sdist from PyPI (hash-checked), raises the C++ standard to C++20, builds
#      the wheel without build isolation (MMCV_WITH_OPS=1, FORCE_CUDA=0 unless set), caches it and
#      installs it. About 20 minutes on 2 cores.
#
# Environment: PYTHON, ZOO_WHEELHOUSE, ZOO_CACHE (default ~/.cache/zoo), MAX_JOBS (default: all cores),
# FORCE_CUDA=1 to compile the CUDA ops too (needs nvcc; the default build has CPU ops only).
set -euo pipefail

MMCV_VERSION=2.1.0
# sha256 of mmcv-2.1.0.tar.gz as published on PyPI.
MMCV_SDIST_SHA256=d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f

cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
FORCE_CUDA=${FORCE_CUDA:-0}
log() { echo "build_mmcv: $*" >&2; }

ops_work() {
    # mmcv.ops loads mmcv/_ext*.so: an undefined symbol here means the wheel was built for another torch.
    "$PYTHON" - "$MMCV_VERSION" <<'EOF' >/dev/null 2>&1
import sys
import mmcv
assert mmcv.__version__ == sys.argv[1], mmcv.__version__
from mmcv.ops import nms  # noqa: F401
EOF
}

if ops_work; then
    log "mmcv $MMCV_VERSION with compiled ops is already installed for $PYTHON"
    exit 0
fi

read -r TORCH_VERSION WHEEL_TAG < <("$PYTHON" - <<'EOF'
import sys, sysconfig
import torch
py = f"cp{sys.version_info.major}{sys.version_info.minor}"
plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
print(torch.__version__, f"{py}-{py}-{plat}")
EOF
)
WHEEL_NAME="mmcv-$MMCV_VERSION-$WHEEL_TAG.whl"
KIND=$([ "$FORCE_CUDA" = 1 ] && echo cuda || echo cpu)
CACHE_DIR="${ZOO_CACHE:-$HOME/.cache/zoo}/wheels/torch-$TORCH_VERSION-$KIND"

try_install() {
    log "installing $1"
    "$PYTHON" -m pip install -q --force-reinstall --no-deps "$1" \
        && "$PYTHON" -m pip install -q "$1" && ops_work
}

for dir in ${ZOO_WHEELHOUSE:-} "$CACHE_DIR"; do
    [ -f "$dir/$WHEEL_NAME" ] || continue
    if try_install "$dir/$WHEEL_NAME"; then
        log "mmcv $MMCV_VERSION installed from $dir"
        exit 0
    fi
    log "$dir/$WHEEL_NAME does not load beside torch $TORCH_VERSION; trying the next source"
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
log "building $WHEEL_NAME against torch $TORCH_VERSION ($KIND ops) in $WORK; about 20 minutes on 2 cores"
start=$(date +%s)

# Build tools go into a folder of their own so that the environment's setuptools stays as it is: the
# sdist's setup.py imports pkg_resources, which setuptools >= 81 no longer ships.
"$PYTHON" -m pip install -q --no-warn-conflicts --target "$WORK/tools" "setuptools<70" wheel ninja
BUILD_ENV=(PYTHONPATH="$WORK/tools${PYTHONPATH:+:$PYTHONPATH}" PATH="$WORK/tools/bin:$PATH")

echo "mmcv==$MMCV_VERSION --hash=sha256:$MMCV_SDIST_SHA256" > "$WORK/requirements.txt"
env "${BUILD_ENV[@]}" "$PYTHON" -m pip download -q --no-deps --no-binary :all: --no-build-isolation --require-hashes \
    -r "$WORK/requirements.txt" -d "$WORK"
tar -xzf "$WORK/mmcv-$MMCV_VERSION.tar.gz" -C "$WORK"
SRC="$WORK/mmcv-$MMCV_VERSION"
sed -i -e 's/-std=c++1[47]/-std=c++20/g' -e 's#/std:c++1[47]#/std:c++20#g' "$SRC/setup.py"
if grep -q "'[-/]std[=:]c++1[47]'" "$SRC/setup.py"; then
    log "could not raise the C++ standard in $SRC/setup.py"; exit 1
fi

# FORCE_CUDA=0 alone still compiles CUDA ops when a GPU is visible: hide it for a CPU build.
if [ "$KIND" = cpu ]; then BUILD_ENV+=(CUDA_VISIBLE_DEVICES=); fi
env "${BUILD_ENV[@]}" MMCV_WITH_OPS=1 FORCE_CUDA="$FORCE_CUDA" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PYTHON" -m pip wheel --no-deps --no-build-isolation -w "$WORK/dist" "$SRC"

mkdir -p "$CACHE_DIR"
cp "$WORK/dist/$WHEEL_NAME" "$CACHE_DIR/"
log "built in $(( $(date +%s) - start )) s; cached as $CACHE_DIR/$WHEEL_NAME"
if ! try_install "$CACHE_DIR/$WHEEL_NAME"; then
    log "the freshly built wheel does not load; see the output above"; exit 1
fi
log "mmcv $MMCV_VERSION installed"
