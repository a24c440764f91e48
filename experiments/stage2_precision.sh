#!/usr/bin/env bash
# Issue 30, part 1: where does stage 2 lose the hypercolumn's precision on the same face?
# Stage 2 of the real recipe (demo.sh --real, before it took --teacher_tau 0.02) at a quarter of its steps (250 of
# 32), from the recipe's stage 1 at half (INIT, default runs/scaling/resnet18_64_x0.5/byol/final: experiments/
# scaling.sh's budget 0.5), one flag changed per row; each judged on MTFL's validation split only
# (match.py --benchmark --split val --pairs 300 --size 64). Finished rows are skipped, so it can be run again.
#   bash experiments/stage2_precision.sh DATA_DIR [VARIANT ...]     # default: every variant below
set -euo pipefail
D=${1:?usage: bash experiments/stage2_precision.sh DATA_DIR [VARIANT ...]}; shift
cd "$(dirname "$0")/.."
PY=.venv/bin/python OUT=${PRECISION_OUT:-runs/precision}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
MTFL=(--dataset mtfl --data_dir "$D/mtfl" --image_size 128)
S2=(--crop_size 64 --batch_size 32 --max_steps 250 --checkpoint_every 50 --warmup_epochs 0.1 --lr 1e-2
    --crop_scale 0.3 1 --flip 0 --probe_pairs 0 --init_from "${INIT:-runs/scaling/resnet18_64_x0.5/byol/final}")
RECIPE=(--objective lead+dve --dve_channels 32 --dve_weight 4 --unfreeze_encoder --keep_frozen 1)
declare -A V=(
    [recipe]="${RECIPE[*]}"
    [keep_frozen2]="--objective lead+dve --dve_channels 32 --dve_weight 4 --unfreeze_encoder --keep_frozen 2"
    [frozen]="--objective lead+dve --dve_channels 32 --dve_weight 4"
    [lead_only]="--objective lead --unfreeze_encoder --keep_frozen 1"
    [tau02]="${RECIPE[*]} --tau 0.02"
    [teacher_tau02]="${RECIPE[*]} --teacher_tau 0.02"
    [recipe_seed1]="${RECIPE[*]} --seed 1"
    [teacher_tau02_seed1]="${RECIPE[*]} --teacher_tau 0.02 --seed 1"
    [dve_weight1]="--objective lead+dve --dve_channels 32 --dve_weight 1 --unfreeze_encoder --keep_frozen 1"
)
ORDER=(recipe teacher_tau02 lead_only recipe_seed1 teacher_tau02_seed1 frozen keep_frozen2 tau02 dve_weight1)
[ $# -gt 0 ] && ORDER=("$@")
mkdir -p "$OUT"
for name in "${ORDER[@]}"; do
    dir=$OUT/$name
    if [ ! -f "$dir/final/model.safetensors" ]; then
        how=""; compgen -G "$dir/checkpoints/step_*" > /dev/null && how=--resume
        [ -z "$how" ] && [ -d "$dir" ] && how=--overwrite
        t0=$SECONDS
        # shellcheck disable=SC2086
        $PY dense_distill.py "${MTFL[@]}" --add_data "imagefolder:$D/celeba_half" "${S2[@]}" ${V[$name]} \
            --output_dir "$dir" $how
        printf '%s\t%s\n' "$name" $((SECONDS - t0)) >> "$OUT/times.tsv"
    fi
    [ -f "$dir/match_val/matching.json" ] || $PY match.py --benchmark "${MTFL[@]}" --split val --pairs 300 --size 64 \
        --model "$dir/final" --output_dir "$dir/match_val"
done
