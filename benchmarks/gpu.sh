#!/usr/bin/env bash
# GPU check and timings for featurelens, on a fresh GPU machine, from the repository root:
#
#     benchmarks/gpu.sh                          # install into .bench/venv-gpu, then check and time
#     DEVICE=cpu LIMIT=2000 VENV=.venv benchmarks/gpu.sh   # dry run of the same steps on a CPU
#
# Budget: 8 minutes including the install. Prints one table (also in $OUT/gpu_table.md, raw
# figures in $OUT/gpu_results.json, the log in $OUT/gpu_log.txt); exit status 0 only when every
# correctness check passed and no section failed (the speed targets are reported, not enforced).
#
# Settings (environment):
#   DEVICE=cuda|cpu      where the model runs (cpu: a dry run, not a measurement)
#   LIMIT=N              images per split (a dry run); default: all 60,000 + 10,000
#   VENV=DIR             the virtual environment to use or create (default .bench/venv-gpu)
#   PYTHON=python3.11    the interpreter that creates it (default: python3.11, else python3 >= 3.11)
#   FASHION_MNIST_DIR    the four Fashion-MNIST IDX .gz files (else /usr/share/datasets/fashion-mnist,
#                        ./data/fashion-mnist, ../shared/data/fashion-mnist or ~/.cache/featurelens)
#   REUSE_TORCH=1        when the machine's Python already has a CUDA torch, build the venv on top of
#                        it (--system-site-packages) instead of downloading torch 2.14.1 (gigabytes);
#                        when it imports Ray and the rest too (.bundle/ray-site.tar.xz, made by
#                        benchmarks/offline_bundle.sh, brings Ray offline), use it as it is
#   OUT=DIR              where the table and the figures go (default .bench/gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
BUDGET=${BUDGET:-480}
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:-}
VENV=${VENV:-.bench/venv-gpu}
OUT=${OUT:-.bench/gpu}
REUSE_TORCH=${REUSE_TORCH:-1}
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RAY_DASHBOARD_STARTUP_TIMEOUT_S=${RAY_DASHBOARD_STARTUP_TIMEOUT_S:-300}
unset RAY_ADDRESS || true
mkdir -p "$OUT"
LOG="$OUT/gpu_log.txt"
: >"$LOG"
say() { echo "[gpu.sh $(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

# --- the data first: without it nothing below is worth installing -------------------------------
have_fmnist() { [ -f "$1/train-images-idx3-ubyte.gz" ] && [ -f "$1/t10k-labels-idx1-ubyte.gz" ]; }
for dir in "${FASHION_MNIST_DIR:-}" /usr/share/datasets/fashion-mnist data/fashion-mnist ../shared/data/fashion-mnist \
           "$HOME/.cache/featurelens/fashion-mnist"; do
  if [ -n "$dir" ] && have_fmnist "$dir"; then export FASHION_MNIST_DIR="$(cd "$dir" && pwd)"; break; fi
done
if [ -z "${FASHION_MNIST_DIR:-}" ] || ! have_fmnist "$FASHION_MNIST_DIR"; then
  say "Fashion-MNIST not found; torchvision's download will be tried (needs the internet). To bring it:"
  say "  mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/  (30 MB; /data/ is git-ignored, so carry it)"
  unset FASHION_MNIST_DIR
else
  say "Fashion-MNIST: $FASHION_MNIST_DIR"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG" || true

# --- Python and the venv ------------------------------------------------------------------------
pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null || continue
    "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo "$candidate"; return; }
  done
  return 1
}
ready() { "$1" -c 'import torch, ray, pyarrow, sklearn, pipelines.training' >/dev/null 2>&1; }

# Offline (no package registry): Ray from the archive that benchmarks/offline_bundle.sh makes.
use_bundle() {
  [ -f .bundle/ray-site.tar.xz ] || return 0
  SITE=/tmp/featurelens-site
  [ -d "$SITE/ray" ] || { mkdir -p "$SITE" && tar -xJf .bundle/ray-site.tar.xz -C "$SITE"; }
  export PYTHONPATH="$SITE:$PYTHONPATH"
  say "Ray from .bundle/ray-site.tar.xz (unpacked in $SITE)"
}

complete_python() {  # the first of the machine's Pythons that has a CUDA torch and imports the rest
  for candidate in "${PYTHON:-}" python3 python3.12 python3.11 python3.13; do
    [ -n "$candidate" ] && command -v "$candidate" >/dev/null || continue
    ready "$candidate" && "$candidate" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' >/dev/null 2>&1 \
      && { echo "$candidate"; return; }
  done
  return 1
}

VPY="$VENV/bin/python"  # the Python that runs the benchmark
{ [ -x "$VPY" ] && ready "$VPY"; } || use_bundle
if [ -x "$VPY" ] && ready "$VPY"; then
  say "using $VENV as it is"
elif [ "$REUSE_TORCH" = 1 ] && MACHINE_PY=$(complete_python); then
  # The machine's Python has everything (its CUDA torch; Ray from the archive): nothing to install.
  # Used directly: a venv made from it would not see its packages when it is itself a venv.
  VPY=$(command -v "$MACHINE_PY")
  say "using the machine's Python as it is: $VPY"
else
  PY=$(pick_python) || { say "no Python >= 3.11 found"; exit 2; }
  VENV_ARGS=()
  DEPS_ARGS=()
  if [ "$REUSE_TORCH" = 1 ] && "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' >/dev/null 2>&1; then
    say "$PY already has a CUDA torch ($("$PY" -c 'import torch; print(torch.__version__)')): the venv builds on it"
    VENV_ARGS=(--system-site-packages)
    # every dependency of pyproject.toml but torch/torchvision, which the machine's Python has
    mapfile -t DEPS_ARGS < <("$PY" - <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    name = re.split(r"[\[<>=!~ ;]", dep, maxsplit=1)[0].lower()
    if name not in ("torch", "torchvision"):
        print(dep)
EOF
)
  fi
  say "creating $VENV with $PY ($("$PY" --version 2>&1)) ${VENV_ARGS[*]:-}"
  "$PY" -m venv "${VENV_ARGS[@]}" "$VENV"
  install() {  # uv when it installs (parallel downloads: about 3x faster than pip here), else pip
    if "$VPY" -m pip install -q uv >>"$LOG" 2>&1; then
      "$VPY" -m uv pip install --python "$VPY" "$@" >>"$LOG" 2>&1 && return 0
      say "uv failed (see $LOG); trying pip"
    fi
    "$VPY" -m pip install -q "$@" >>"$LOG" 2>&1
  }
  if [ ${#VENV_ARGS[@]} -gt 0 ]; then
    install "${DEPS_ARGS[@]}" || say "installing the dependencies failed (offline?): the script goes on with what is there"
    install --no-deps -e . || say "pip install -e . failed: using PYTHONPATH=$PWD instead"
  else
    install -e . || { say "pip install -e . failed: see $LOG"; tail -20 "$LOG"; exit 2; }
  fi
fi
say "installed in $(( $(date +%s) - T0 )) s: $("$VPY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1)"

# --- the checks and timings ---------------------------------------------------------------------
LEFT=$(( BUDGET - ( $(date +%s) - T0 ) - 20 ))
say "running benchmarks.gpu (device $DEVICE${LIMIT:+, limit $LIMIT}; $LEFT s left of the $BUDGET s budget)"
set +e
"$VPY" -m benchmarks.gpu --device "$DEVICE" ${LIMIT:+--limit "$LIMIT"} --out "$OUT" --deadline "$LEFT" 2>&1 | tee -a "$LOG"
STATUS=${PIPESTATUS[0]}
set -e
say "finished with status $STATUS in $(( $(date +%s) - T0 )) s (budget $BUDGET s)"
exit "$STATUS"
