#!/usr/bin/env bash
# Offline wheels for a GPU node that has its own PyTorch and no package index: the non-torch
# runtime dependencies of mmtok, its plugins' code that the GPU check imports, the device tests
# and the benchmarks, pinned to the versions installed where this runs (the dev venv).
#
#   bash benchmarks/gpu_wheels.sh [--no-scipy] [--with-numpy] [DEST]     # DEST default: .gpu_wheels/
#
# Run it where pip can download (activate the venv first: the pins are read from it). Then carry
# DEST along with the checkout; benchmarks/gpu_check.sh (its setup step, benchmarks/gpu_env.py)
# installs from it with `pip install --no-index --no-deps --target .gpu_site` only what the
# node's Python lacks.
#
# The list was found by running the GPU check's dry run in a venv holding only torch and numpy:
# these and nothing else were missing. numpy is left out (every PyTorch GPU image carries it;
# --with-numpy adds it, 16 MB). scipy (35 MB) is needed by one step only: the NIR plugin imports it
# when it loads (mmtok_plugin_nir.preprocessing), so without it the nir plugin fails to load and
# bench_nir fails; the device tests' models and the other benchmarks run without it (the HSI
# plugin's data code imports it lazily). --no-scipy leaves it out where the node has it (this
# workplace's H200 image does), which keeps the checkout plus the wheels under the device tool's
# 64 MiB transfer limit. GPU_WHEELS_PYTHON (default 3.12)
# is the node's Python version.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCIPY=1 NUMPY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --no-scipy) SCIPY=0; shift ;;
    --with-numpy) NUMPY=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
DEST=${1:-$ROOT/.gpu_wheels}
PYVER=${GPU_WHEELS_PYTHON:-3.12}
PY=${PYTHON:-python3}
LIMIT_MIB=64

NAMES=(
  # mmtok itself
  pydantic pydantic-core annotated-types typing-inspection typing-extensions
  beartype jaxtyping wadler-lindig pluggy safetensors pyyaml tqdm
  vector-quantize-pytorch einops einx frozendict loguru torch-einops-utils   # the quantizers
  pywavelets                                                                  # NIR wavelet embedding
  nibabel                                                                     # imported by mmtok_plugin_ct
  # the device tests (tests/conftest.py imports hypothesis)
  pytest iniconfig packaging pygments hypothesis sortedcontainers
)
[ "$SCIPY" = 1 ] && NAMES+=(scipy)
[ "$NUMPY" = 1 ] && NAMES+=(numpy)
case "$PYVER" in 3.10|3.11) NAMES+=(importlib-resources) ;; esac   # nibabel's, before Python 3.12

# pin each to the version installed here
mkdir -p "$DEST"
"$PY" - "${NAMES[@]}" > "$DEST/requirements.txt" <<'EOF'
import importlib.metadata as md, sys
missing = []
for name in sys.argv[1:]:
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        missing.append(name)
if missing:
    sys.exit(f"not installed here, so no version to pin: {', '.join(missing)} (activate the dev venv)")
EOF
mapfile -t PINS < "$DEST/requirements.txt"
echo "pip download into $DEST (Python $PYVER, manylinux x86_64): ${PINS[*]}"
"$PY" -m pip download -q --only-binary=:all: --no-deps --python-version "$PYVER" --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 -d "$DEST" "${PINS[@]}"

# one version per distribution: drop wheels of other versions left from earlier downloads
"$PY" - "$DEST" <<'EOF'
import re, sys
from pathlib import Path
dest = Path(sys.argv[1])
want = {}
for line in (dest / "requirements.txt").read_text().split():
    name, version = line.split("==")
    want[re.sub(r"[-_.]+", "-", name).lower()] = version
for whl in dest.glob("*.whl"):
    name, version = whl.name.split("-")[:2]
    if want.get(re.sub(r"[-_.]+", "-", name).lower()) != version:
        print(f"removing {whl.name} (not in requirements.txt)")
        whl.unlink()
EOF

TOTAL=$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f1)
echo
ls -l "$DEST"/*.whl | awk '{printf "%8.2f MiB  %s\n", $5 / 1048576, $NF}' | sort -n
MIB=$("$PY" -c "print(f'{$TOTAL / 2**20:.1f}')")
echo "total: $MIB MiB in $(ls "$DEST"/*.whl | wc -l) wheels (limit $LIMIT_MIB MiB)"
if [ "$TOTAL" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "over $LIMIT_MIB MiB: leave out numpy (no --with-numpy) and, where the node has it, scipy (--no-scipy)" >&2
  exit 1
fi
