#!/usr/bin/env bash
# Issue 30, part 2: the real recipe (demo.sh --real) at other budgets of stages 1 + 2, everything else fixed.
# A budget F scales both stages' steps (stage 1: 500 F steps of 64, stage 2: 1,000 F of 32); ARCH and SIZE change
# the network or the views at a budget. Each run is judged on MTFL's validation split only: matching
# (match.py --benchmark --split val --pairs 300 --size SIZE) of LEAD-64 and the hypercolumn, and LEAD-64's
# regression on MTFL's first 3,000 training faces scored on val (DVE's crop; the 960-d hypercolumn's would cost
# ~8 min a run). Finished parts are skipped, interrupted ones resumed: run it again to continue.
#   bash experiments/scaling.sh DATA_DIR F [ARCH [SIZE]]    # into runs/scaling/<arch>_<size>_x<F>/
#   STAGE1_ONLY=1 bash experiments/scaling.sh DATA_DIR 0.5      # stage 1 alone: stage2_precision.sh's teacher
#   python experiments/scaling.py runs/scaling/*/ ...          # the table, the fit and the plot
set -euo pipefail
D=${1:?usage: bash experiments/scaling.sh DATA_DIR F [ARCH [SIZE]]}; F=${2:?budget F}; ARCH=${3:-resnet18}
SIZE=${4:-64}
cd "$(dirname "$0")/.."
PY=.venv/bin/python OUT=${SCALING_OUT:-runs/scaling}/${ARCH}_${SIZE}_x$F
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
steps() { $PY -c "import sys; print(max(4, round($1 * float(sys.argv[1]))))" "$F"; }
S1_STEPS=$(steps 500) S2_STEPS=$(steps 1000)
every() { $PY -c "import sys; print(max(2, int(sys.argv[1]) // 5))" "$1"; }
IMAGE=$(( SIZE > 64 ? SIZE * 2 : 128 ))     # the recipe: 64 px views of 128 px images
PRE=(--dataset mtfl --data_dir "$D/mtfl" --add_data "imagefolder:$D/celeba_half" --image_size "$IMAGE")
# demo.sh --real's flags (S1, S2), the steps and the shape aside; S2_FLAGS replaces stage 2's objective flags (the
# default is the recipe the study ran, before demo.sh took --teacher_tau 0.02: experiments/stage2_precision.md)
S1=(--arch "$ARCH" --crop_size "$SIZE" --batch_size 64 --lr 4e-3 --max_steps "$S1_STEPS" --checkpoint_every
    "$(every "$S1_STEPS")" --proj_hidden 512 --warmup_epochs 0.1 --optimizer adam --objective pixel --dve_weight 4
    --crop_scale 0.3 1 --flip 0 --probe_pairs 0)
S2=(--crop_size "$SIZE" --batch_size 32 --max_steps "$S2_STEPS" --checkpoint_every "$(every "$S2_STEPS")"
    --warmup_epochs 0.1 --lr 1e-2 --crop_scale 0.3 1 --flip 0 --probe_pairs 0
    ${S2_FLAGS:---objective lead+dve --dve_channels 32 --dve_weight 4 --unfreeze_encoder --keep_frozen 1})
stage() {       # stage NAME SCRIPT ARGS...: skipped when done, resumed when interrupted
    local dir=$OUT/$1 script=$2 how=""
    shift 2
    [ -f "$dir/final/model.safetensors" ] && return
    if compgen -G "$dir/checkpoints/step_*" > /dev/null; then how=--resume; elif [ -d "$dir" ]; then how=--overwrite; fi
    local t0=$SECONDS
    $PY "$script" "$@" --output_dir "$dir" $how
    printf '%s\t%s\n' "$(basename "$dir")" $((SECONDS - t0)) >> "$OUT/times.tsv"
}
mkdir -p "$OUT"
stage byol byol_pretrain.py "${PRE[@]}" "${S1[@]}"
[ "${STAGE1_ONLY:-0}" = 1 ] && exit 0
stage distill dense_distill.py "${PRE[@]}" "${S2[@]}" --init_from "$OUT/byol/final"
VAL=(--dataset mtfl --data_dir "$D/mtfl" --image_size 128 --split val)
[ -f "$OUT/match_val/matching.json" ] || $PY match.py --benchmark "${VAL[@]}" --pairs 300 --size "$SIZE" \
    --model "$OUT/distill/final" "$OUT/byol/final" --output_dir "$OUT/match_val"
[ -f "$OUT/regress_val/results.json" ] || $PY regress.py --dataset mtfl --data_dir "$D/mtfl" --image_size 128 \
    --num_images 3000 --score_split val --protocol dve --epochs 2 --min_steps 300 --eval_every 100 \
    --features_from "$OUT/distill/final" --output_dir "$OUT/regress_val" \
    $([ -d "$OUT/regress_val" ] && echo --resume)
