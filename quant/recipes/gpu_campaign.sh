#!/usr/bin/env bash
# One timed training campaign on a single GPU: every committed model of models/trained
# in one go, several runs sharing the GPU at once (small shift networks leave a big GPU
# mostly idle, so running them side by side costs each one little).
#
#   phase A  float:   CIFAR-10 ShiftResNet-20 E=6 and E=1, Fashion-MNIST E=3
#   phase B  QAT:     W8A8 and W4A4 (po2 scales) from each float model, distilled from it
#   phase C  fold-BN: the BN-folded twin that equals the integer program, fine-tuned
#
# Each run trains for a time budget (quant.train --time-budget), so the whole campaign
# ends on time whatever the GPU's speed; result.json records the epochs it reached.
# A QAT or fold run whose input checkpoint is missing (its earlier run failed) falls back
# to training from scratch.
#
#   bash quant/recipes/gpu_campaign.sh WORKDIR [SECONDS_A SECONDS_B SECONDS_C]
#
# Data: CIFAR10_DATA (default .data/cifar10-jpeg.tar.gz) and FMNIST_DATA (default
# .data/fashion-mnist). EXTRA is appended to every quant.train command (e.g. for a
# CPU smoke test: EXTRA="--device cpu --limit-train-batches 3 --limit-eval-batches 1").
# If OUT is set, the finished runs are packed there as tarballs after every phase.
# If TOTAL is set (seconds), phases B and C shrink so that the campaign ends within it.
# SECONDS_A = 0 skips phase A and starts from the float runs already in WORKDIR/runs (a
# campaign split over two calls); SECONDS_C = 0 skips phase C (fold elsewhere, e.g. a CPU).
# Brevitas must be importable by $PYTHON: install the wheels with `python3 -m pip`, not a
# bare `pip`, which may belong to another Python.
set -u
W=${1:?usage: gpu_campaign.sh WORKDIR [SECONDS_A SECONDS_B SECONDS_C]}
TA=${2:-220}; TB=${3:-100}; TC=${4:-40}
C10=${CIFAR10_DATA:-.data/cifar10-jpeg.tar.gz}
FM=${FMNIST_DATA:-.data/fashion-mnist}
EXTRA=${EXTRA:-}
R=$W/runs
PY=${PYTHON:-python3}
START=$(date +%s); TOTAL=${TOTAL:-0}
# Wall time a phase takes beyond its training budget (process start, data to the GPU,
# QAT calibration, validation and test passes), as measured in the first campaign on an
# H100 (docs/TRAINING.md): QAT's is large (calibration and slow fake-quant evaluation).
OVERHEAD_B=120; OVERHEAD_C=25
for v in "$TA" "$TB" "$TC" "$TOTAL"; do
    case $v in ''|*[!0-9]*) echo "gpu_campaign.sh: budgets are whole seconds, got '$v'" >&2; exit 2;; esac
done
if [ "$TA" -eq 0 ]; then  # a split campaign: its float runs must be there, not silently retrained
    for f in c10e6 c10e1 fme3; do
        [ -f "$R/$f-float/best.pt" ] || {
            echo "gpu_campaign.sh: SECONDS_A = 0 needs the float run $R/$f-float (best.pt)" >&2; exit 2; }
    done
fi
mkdir -p "$R" "$W/logs"
export SHIFTFPGA_CACHE=$W/cache PYTHONUNBUFFERED=1

# Data once, before the runs start (they would race on the decode cache).
$PY -m quant.data cifar10 "$C10" & $PY -m quant.data fashion-mnist "$FM" & wait

fit() {  # BUDGET OVERHEAD RESERVE: the budget, cut so that RESERVE seconds stay after the phase
    local left=$(( TOTAL - ($(date +%s) - START) - $2 - $3 ))
    if [ "$TOTAL" -gt 0 ] && [ "$left" -lt "$1" ]; then echo $(( left > 10 ? left : 10 )); else echo "$1"; fi
}

train() {  # NAME DATASET-DIR BUDGET ARGS...: one background run, log in $W/logs/NAME.log
    local name=$1 data=$2 budget=$3; shift 3
    $PY -m quant.train "$@" --data-dir "$data" --time-budget "$budget" --epochs 1000 \
        --out "$R/$name" --overwrite --no-progress --log-every 0 --threads 2 $EXTRA \
        > "$W/logs/$name.log" 2>&1 &
}
ckpt() {  # the best-validation checkpoint of a finished run, if there is one
    [ -f "$R/$1/best.pt" ] && echo "$R/$1/best.pt"
}
pack() {  # keep what a user needs (no last.pt: optimiser state) in one tarball per family
    [ -n "${OUT:-}" ] || return 0
    for fam in c10e6 c10e1 fme3; do
        (cd "$R" && tar czf "$OUT/$fam.tar.gz" --exclude last.pt $fam-* 2>/dev/null)
    done
    tar czf "$OUT/logs.tar.gz" -C "$W" logs
}
summary() {
    $PY - "$R" <<'EOF'
import json, sys
from pathlib import Path
print(f"{'run':<22} {'epochs':>7} {'train s':>8} {'img/s':>8} {'best val':>9} {'test':>7} {'test@best':>9}")
for d in sorted(Path(sys.argv[1]).iterdir()):
    try:
        r = json.loads((d / "result.json").read_text())
    except (OSError, ValueError):
        print(f"{d.name:<22} (no result)"); continue
    h = r.get("history") or [{}]
    print(f"{d.name:<22} {h[-1].get('epoch', 0):>7} {r['train_time_s']:>8} {r['images_per_s'] or 0:>8} "
          f"{r['best_val_acc'] or 0:>9} {r['test_top1'] or 0:>7} {r['test_top1_best_val'] or 0:>9}")
EOF
}

COMMON="--momentum 0.9 --nesterov --wd 5e-4 --schedule cosine"
FLOAT="$COMMON --batch-size 256 --lr 0.2 --warmup 2 --label-smoothing 0.1"
QAT="$COMMON --batch-size 256 --lr 0.02 --warmup 0.5 --scaling po2 --calibrate-batches 16"
FOLD="$COMMON --batch-size 256 --lr 0.0005 --scaling po2 --fold-bn"

if [ "$TA" -gt 0 ]; then
    echo "== phase A (float, ${TA}s) $(date -u +%T)"
    train c10e6-float "$C10" "$TA" --model shiftresnet20 --expansion 6 --dataset cifar10 $FLOAT
    train c10e1-float "$C10" "$TA" --model shiftresnet20 --expansion 1 --dataset cifar10 $FLOAT
    train fme3-float "$FM" "$TA" --model shiftresnet20 --expansion 3 --dataset fashion-mnist $FLOAT
    wait; pack; summary
else
    echo "== phase A skipped (SECONDS_A = 0): float runs taken from $R"
fi

TB=$(fit "$TB" $OVERHEAD_B $(( TC > 0 ? TC + OVERHEAD_C : 0 )))
echo "== phase B (QAT, ${TB}s) $(date -u +%T)"
for fam in c10e6:cifar10:6 c10e1:cifar10:1 fme3:fashion-mnist:3; do
    IFS=: read -r f ds e <<<"$fam"
    data=$C10; [ "$ds" = fashion-mnist ] && data=$FM
    t=$(ckpt "$f-float"); from=${t:+--init $t --teacher $t}
    bitsets="w8a8 w4a4"; [ "$f" = fme3 ] && bitsets="w8a8"
    for bits in $bitsets; do
        train "$f-$bits" "$data" "$TB" --model shiftresnet20 --expansion "$e" --dataset "$ds" \
            --bits "$bits" $QAT $from
    done
done
wait; pack; summary

if [ "$TC" -le 0 ]; then
    echo "== phase C skipped (SECONDS_C = 0)"; echo "== done $(date -u +%T)"; exit 0
fi
TC=$(fit "$TC" $OVERHEAD_C 0)
echo "== phase C (fold BN, ${TC}s) $(date -u +%T)"
for run in c10e6-w8a8 c10e6-w4a4 c10e1-w8a8 c10e1-w4a4 fme3-w8a8; do
    t=$(ckpt "$run") || continue
    f=${run%-*}; bits=${run##*-}
    ds=cifar10; data=$C10; e=${f#c10e}
    if [ "$f" = fme3 ]; then ds=fashion-mnist; data=$FM; e=3; fi
    tt=$(ckpt "$f-float"); teach=${tt:+--teacher $tt}
    train "$run-fold" "$data" "$TC" --model shiftresnet20 --expansion "$e" --dataset "$ds" \
        --bits "$bits" $FOLD --init "$t" $teach
done
wait; pack; summary
echo "== done $(date -u +%T)"
