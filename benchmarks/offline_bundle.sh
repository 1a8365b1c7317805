#!/usr/bin/env bash
# Ray, and the packages it needs that a CUDA PyTorch image usually lacks, as one archive for a GPU
# machine that cannot reach a package registry (benchmarks/gpu.sh unpacks it when it is there):
#
#     benchmarks/offline_bundle.sh [PYTHON_VERSION]    # default 3.12 -> .bundle/ray-site.tar.xz
#
# The wheels are unpacked rather than installed, and what the benchmarks never load is left out
# (Ray's Java jar, RLlib, Serve, the dashboard's web page; binaries stripped): about 21 MB instead
# of the 78 MB Ray wheel, so that it travels with the four Fashion-MNIST files within 64 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=${1:-3.12}
RAY=$(grep -o 'ray\[[^]]*\]==[0-9.]*' pyproject.toml | sed 's/\[[^]]*\]//')
PACKAGES=("$RAY" jsonschema jsonschema-specifications referencing rpds-py tensorboardX pydantic pydantic-core
          annotated-types typing-inspection)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version "$PYTHON_VERSION" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$WORK/wheels" "${PACKAGES[@]}"
mkdir "$WORK/site"
for wheel in "$WORK"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$WORK/site"; done
rm -rf "$WORK"/site/ray/{jars,rllib,serve,tests,cpp,dashboard/client/build}
find "$WORK/site" -name '*.map' -delete
strip --strip-unneeded "$WORK"/site/ray/_raylet.so "$WORK"/site/ray/core/src/ray/gcs/gcs_server \
  "$WORK"/site/ray/core/src/ray/raylet/raylet
mkdir -p .bundle
tar -cf - -C "$WORK/site" . | xz -9 -T0 >.bundle/ray-site.tar.xz.tmp
mv .bundle/ray-site.tar.xz.tmp .bundle/ray-site.tar.xz
echo "$(du -h .bundle/ray-site.tar.xz | cut -f1) .bundle/ray-site.tar.xz: ${PACKAGES[*]} for Python $PYTHON_VERSION"
