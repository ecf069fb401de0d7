#!/usr/bin/env bash
# One prepared GPU check (under 8 minutes): bf16 NCCL training steps, then the inference pipeline on a
# synthetic archive; prints km2/h end to end and model-only, GPU utilisation and peak GPU memory, and writes
# gpu_check.json to $OUT (or benchmarks/results). See benchmarks/gpu_check.py.
#
# On the lent GPU machines (Python 3.12 with torch, no geo stack, no network) carry the wheels the
# pipeline needs, fetched here once:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     rasterio==1.4.4 affine click-plugins cligj odc-geo==0.5.0 odc-stac==0.5.3 odc-loader pystac pystac-client \
#     shapely pyproj zarr==3.1.6 numcodecs donfig google-crc32c pydantic pydantic-core annotated-types \
#     typing-inspection dask partd locket cachetools safetensors
# and run: bash benchmarks/gpu_check.sh   (with carry: [".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 470 python3 benchmarks/gpu_check.py --size-km "${SIZE_KM:-40}" --out "${OUT:-benchmarks/results}"
