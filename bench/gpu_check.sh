#!/usr/bin/env bash
# The GPU path in one script, for a machine with one NVIDIA GPU: installs what it needs, runs the
# demo configuration in bf16 with nccl on that GPU (ZeRO-3, one rank, the default budget), and
# reports samples/s, MFU against the GPU's bf16 peak, the peak device memory next to what
# `lorarec plan` predicts for the same run, and the quality table's LLM row. Meant to finish in
# under 8 minutes on a current data-centre GPU.
#
#   bash bench/gpu_check.sh              # run it (on the GPU machine, in the repository root)
#   bash bench/gpu_check.sh --dry-run    # print every command it would run, run none
#
# Options: --out DIR (default runs/gpu_check), --wheels DIR (install offline from the wheels in
# DIR: pip --no-index --find-links DIR), --python PY (default python3), --torch-index URL (the
# CUDA build of torch; default https://download.pytorch.org/whl/cu128), --no-install (use the
# Python environment as it is). The report: OUT/gpu_check.json and OUT/gpu_check.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=runs/gpu_check
WHEELS=""
PY=python3
TORCH_INDEX=https://download.pytorch.org/whl/cu128
INSTALL=1
TORCH_VERSION=$(sed -n 's/.*torch==\([0-9.]*\).*/\1/p' Makefile | head -1)
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT=$2; shift ;;
        --wheels) WHEELS=$2; shift ;;
        --python) PY=$2; shift ;;
        --torch-index) TORCH_INDEX=$2; shift ;;
        --no-install) INSTALL=0 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "bench/gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

VENV=$OUT/venv
BIN=$VENV/bin
RUN=$OUT/demo
# the demo configuration, on one GPU in bf16: ZeRO-3 with nccl, one rank
TRAIN_OVERRIDES=(launch.accelerator=cuda launch.ranks_per_node=1 model.dtype=bfloat16
                 deepspeed.config=zero3_bf16 train.gradient_accumulation_steps=2)

run() {  # print the command (quoted as a shell reads it); run it unless --dry-run
    printf '+'; printf ' %q' "$@"; printf '\n'
    if [ "$DRY" = 0 ]; then "$@"; fi
}

if [ "$DRY" = 0 ]; then
    command -v nvidia-smi >/dev/null || { echo "bench/gpu_check.sh: no nvidia-smi: not an NVIDIA GPU machine" >&2; exit 2; }
    mkdir -p "$OUT"
fi
run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ "$INSTALL" = 1 ]; then
    run "$PY" -m venv "$VENV"
    if [ -n "$WHEELS" ]; then
        PIP=(--no-index --find-links "$WHEELS")
        run "$BIN/python" -m pip install -q "${PIP[@]}" "torch==$TORCH_VERSION"
    else
        PIP=()
        run "$BIN/python" -m pip install -q --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION"
    fi
    run "$BIN/python" -m pip install -q "${PIP[@]}" -e .
    LORAREC=$BIN/lorarec
    PYRUN=$BIN/python
else
    LORAREC=lorarec
    PYRUN=$PY
fi
run "$PYRUN" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
run "$LORAREC" fetch ml-100k smollm2-135m
run "$LORAREC" data prepare ml-100k --out runs/data/ml-100k
run "$LORAREC" plan --config configs/demo.yaml --nodes 1 --gpus-per-node 1 --device gpu \
    --write "$OUT/plan" "${TRAIN_OVERRIDES[@]}"
run timeout 480 "$LORAREC" train configs/demo.yaml --out "$RUN" "${TRAIN_OVERRIDES[@]}"
run "$PYRUN" bench/gpu_report.py --run "$RUN" --plan "$OUT/plan" --out "$OUT"
