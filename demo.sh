#!/usr/bin/env bash
# The whole pipeline on the embedded synthetic faces, at CPU size:
#   synthetic data -> stage 1 (byol_pretrain.py) -> stage 2 (dense_distill.py) -> regression, aligned and
#   unaligned (regress.py) -> few-shot curve -> matching benchmark and one picture (match.py) -> report.md
# or, with --real DIR, on real photographs (DIR holds MTFL as shipped in mtfl/ and, when present, CelebA at any
# resolution in celeba_half/, AFW and HELEN's training faces with their 68-point .pts in afw/ and helen_train/):
#   stage 1 + 2 on the unlabelled MTFL training photos (+ celeba_half) -> regression on MTFL's training faces,
#   tested on its 2,995 AFLW faces ("MTFL -> AFLW_M test", DVE's crop), with the supervised ceiling, and the
#   few-shot curve -> the 68-point regressor (AFW + HELEN, scored on their validation photos) -> matching on AFLW
#   by this repository's protocol and by DVE's, and on AFW (68 points) -> report.md with the floors and the
#   paper's rows
#
#   bash demo.sh                 # installs into .venv (once), then the demo: runs/demo/report.md (~15 min on 2 cores)
#   bash demo.sh --quick         # the same steps with tiny sizes (~2 min): what CI runs
#   bash demo.sh --real DIR      # real faces: runs/demo_real/report.md (--quick: tiny sizes)
#
# Every training and evaluation stage is launched with `accelerate launch` and the flags below, nothing else.
# Running it again reuses the cached data and skips finished stages; a stage that was interrupted is continued
# with --resume (started again when it stopped before its first checkpoint).
# DEMO_OUT=folder puts the runs elsewhere (default runs/demo, runs/demo_real; with --quick runs/demo_quick,
# runs/demo_real_quick).
set -euo pipefail
QUICK=0
REAL=""
usage() { echo "usage: bash demo.sh [--quick] [--real DIR]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --real) [ $# -ge 2 ] || usage; REAL=$2; shift 2 ;;
        *) usage ;;
    esac
done
if [ -n "$REAL" ] && [ -d "$REAL" ]; then REAL=$(cd "$REAL" && pwd); fi    # DIR as the caller meant it
cd "$(dirname "$0")"
if [ -n "$REAL" ] && [ ! -f "$REAL/mtfl/training.txt" ]; then
    echo "error: --real $REAL: $REAL/mtfl/training.txt not found (DIR holds MTFL as shipped in mtfl/, and" \
         "optionally celeba_half/ and afw/)" >&2
    exit 2
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# install once per version of requirements.txt (pip's check of an installed environment alone takes ~6 s)
if ! cmp -s requirements.txt .venv/.demo_requirements; then
    .venv/bin/python -m pip install -q -r requirements.txt
    cp requirements.txt .venv/.demo_requirements
fi
PY=.venv/bin/python
# the launcher's own defaults, said aloud to keep it quiet; the scripts' --mixed_precision auto picks the precision
LAUNCH=(.venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)}

if [ -n "$REAL" ]; then
    # the real-face recipe: experiments/real_faces.md says how it was chosen
    MTFL=(--dataset mtfl --data_dir "$REAL/mtfl")
    PRE=("${MTFL[@]}")
    if [ -d "$REAL/celeba_half" ]; then PRE+=(--add_data "imagefolder:$REAL/celeba_half"); fi
fi
if [ "$QUICK" = 1 ]; then
    OUT=${DEMO_OUT:-runs/demo_quick}
    DATA=(--image_size 64 --num_images 96)
    S1=(--crop_size 32 --batch_size 16 --lr 1.6e-2 --max_steps 4 --checkpoint_every 2 --proj_hidden 64 --probe_pairs 8)
    S2=(--crop_size 32 --batch_size 16 --max_steps 4 --checkpoint_every 2 --fpn_width 64 --probe_pairs 8)
    REG=(--resize 44 --crop 32 --epochs 1 --min_steps 10 --eval_every 5 --intermediate 4 --fit_rows 1024)
    FEW=(--num_train 5 20 --seeds 2)
    MATCH=(--pairs 16 --size 32 --fit_rows 1024)
    DVE_MATCH=(--protocol dve --pairs 4)
    if [ -n "$REAL" ]; then OUT=${DEMO_OUT:-runs/demo_real_quick}; DATA=(--image_size 48 --num_images 48); fi
elif [ -n "$REAL" ]; then
    OUT=${DEMO_OUT:-runs/demo_real}
    DATA=(--image_size 128)
    S1=(--crop_size 64 --batch_size 64 --lr 4e-3 --max_steps 500 --checkpoint_every 100 --proj_hidden 512)
    S2=(--crop_size 64 --batch_size 32 --max_steps 1000 --checkpoint_every 200)
    REG=(--protocol dve --epochs 2 --min_steps 300 --eval_every 100)
    FEW=(--num_train 5 20 100 --seeds 2)
    MATCH=(--pairs 300 --size 64)
    DVE_MATCH=(--protocol dve)
else
    OUT=${DEMO_OUT:-runs/demo}
    DATA=(--dataset synthetic)
    S1=(--crop_size 64 --batch_size 64 --lr 4e-3 --max_steps 100 --checkpoint_every 50 --proj_hidden 512)
    S2=(--crop_size 64 --batch_size 32 --max_steps 150 --checkpoint_every 50)
    REG=(--resize 90 --crop 64 --epochs 3 --min_steps 100 --eval_every 50 --fit_rows 2048)
    FEW=(--num_train 5 20 100 --seeds 2)
    MATCH=(--pairs 300 --size 64 --fit_rows 2048)
fi
mkdir -p "$OUT"

# run_stage NAME DONE_FILE COMMAND...: skipped when OUTPUT/NAME/DONE_FILE exists; an interrupted run in
# OUTPUT/NAME is continued with --resume from its checkpoints (regress.py: its finished runs), or started again
# with --overwrite when it has none; the stage's wall time is appended to OUTPUT/times.tsv
run_stage() {
    local name=$1 done=$2 dir="$OUT/$1" how=""
    shift 2
    if [ -e "$dir/$done" ]; then echo "== $name: done ($dir/$done), skipped"; return; fi
    if compgen -G "$dir/checkpoints/step_*" > /dev/null || compgen -G "$dir/runs/*.json" > /dev/null; then
        how=--resume
    elif [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
        how=--overwrite
    fi
    echo "== $name $how"
    local t0=$SECONDS
    "$@" --output_dir "$dir" $how
    printf '%s\t%s\n' "$name" $((SECONDS - t0)) >> "$OUT/times.tsv"
}

# stage 1: pixel-level BYOL with DVE's term on its dense projections (the cross-identity study's recipe,
# experiments/cross_identity.md, section 9); stage 2: LEAD distillation beside DVE's cross-identity term (weight 4)
# on part of the channels, encoder from layer 1 on (section 10). --lr is per 256 images (every stage's rule): stage 1's
# 4e-3 at batch 64 (1.6e-2 at the quick 16) is Adam's 1e-3 per step
S1+=(--arch resnet18 --warmup_epochs 0.1 --optimizer adam --objective pixel --dve_weight 4 --crop_scale 0.3 1
     --flip 0)
S2+=(--warmup_epochs 0.1 --lr 1e-2 --crop_scale 0.3 1 --flip 0 --objective lead+dve --dve_channels 32 --dve_weight 4
     --unfreeze_encoder --keep_frozen 1)
if [ -n "$REAL" ]; then
    # on real faces the teacher's similarities are sharpened (0.02; the student's stay at --tau 0.05): LEAD-64 keeps
    # more of the hypercolumn's same-face precision (experiments/stage2_precision.md, chosen on MTFL's validation split)
    S2+=(--teacher_tau 0.02)
    run_stage byol final/model.safetensors "${LAUNCH[@]}" byol_pretrain.py "${PRE[@]}" "${DATA[@]}" "${S1[@]}"
    run_stage distill final/model.safetensors "${LAUNCH[@]}" dense_distill.py "${PRE[@]}" "${DATA[@]}" "${S2[@]}" \
        --init_from "$OUT/byol/final"
    # regression on MTFL's training faces, tested on the 2,995 AFLW faces ("MTFL -> AFLW_M test"), DVE's crop: the
    # untrained network and the supervised ceiling (the stage-2 network from scratch, trained end to end) beside
    run_stage regress results.json "${LAUNCH[@]}" regress.py "${MTFL[@]}" "${DATA[@]}" "${REG[@]}" \
        --features_from "$OUT/distill/final" "$OUT/byol/final" random-resnet18 "supervised:$OUT/distill/final"
    run_stage fewshot results.json "${LAUNCH[@]}" regress.py "${MTFL[@]}" "${DATA[@]}" "${REG[@]}" "${FEW[@]}" \
        --features_from "$OUT/distill/final"
    # the 68-point model: AFW and HELEN's training faces (afw/ and helen_train/), split by photo, scored on val; its
    # 3,400 heatmaps make a 960-d source cost ~8 minutes, so the hypercolumn row is left to experiments/real_faces.md
    FACES68=$(for d in afw helen_train; do [ -d "$REAL/$d" ] && printf '%s:' "$REAL/$d"; done; true)
    if [ -n "$FACES68" ]; then
        run_stage regress68 results.json "${LAUNCH[@]}" regress.py --dataset ptsfolder --data_dir "${FACES68%:}" \
            --score_split val "${DATA[@]}" "${REG[@]}" --features_from "$OUT/distill/final" random-resnet18 \
            "supervised:$OUT/distill/final"
    fi
    # matching on the AFLW test faces: this repository's protocol (% IOD) and DVE's (px of 70 x 70, Table 1's)
    MODELS=(--model "$OUT/distill/final" "$OUT/byol/final" random-resnet18)
    run_stage match_aflw matching.json "${LAUNCH[@]}" match.py --benchmark "${MTFL[@]}" "${DATA[@]}" "${MATCH[@]}" \
        "${MODELS[@]}"
    run_stage match_aflw_dve matching.json "${LAUNCH[@]}" match.py --benchmark "${MTFL[@]}" "${DATA[@]}" \
        "${DVE_MATCH[@]}" "${MODELS[@]}"
    PICTURE=("${MTFL[@]}") PAIR=(--ref test:0 --query test:7)
    if [ -d "$REAL/afw" ]; then
        AFW=(--dataset ptsfolder --data_dir "$REAL/afw")
        run_stage match_afw matching.json "${LAUNCH[@]}" match.py --benchmark "${AFW[@]}" --split all "${DATA[@]}" \
            "${MATCH[@]}" "${MODELS[@]}"
        PICTURE=("${AFW[@]}") PAIR=(--ref all:0 --query all:7)
    fi
    # one picture: a face's points carried to another person's (under runs/, never committed: the data's own)
    $PY match.py "${PICTURE[@]}" "${DATA[@]}" --model "$OUT/distill/final" "${PAIR[@]}" --out "$OUT/match.png"
    $PY -m common.demo_report "$OUT" --real $([ "$QUICK" = 1 ] && echo --quick)
    exit 0
fi

t0=$SECONDS
$PY prepare_data.py "${DATA[@]}" --preview "$OUT/samples.png"
$PY prepare_data.py "${DATA[@]}" --variant unaligned --splits train,val,test --preview "$OUT/samples_unaligned.png"
printf 'data\t%s\n' $((SECONDS - t0)) >> "$OUT/times.tsv"

run_stage byol final/model.safetensors "${LAUNCH[@]}" byol_pretrain.py "${DATA[@]}" "${S1[@]}"
run_stage distill final/model.safetensors "${LAUNCH[@]}" dense_distill.py "${DATA[@]}" "${S2[@]}" \
    --init_from "$OUT/byol/final"
# stage 3: regression on all labels, for the compact features, the teacher's hypercolumn, NMF and random init
for variant in aligned unaligned; do
    run_stage "regress_$variant" results.json "${LAUNCH[@]}" regress.py "${DATA[@]}" "${REG[@]}" \
        --variant "$variant" --features_from "$OUT/distill/final" "$OUT/byol/final" nmf:64 random-resnet18 \
        --hypercolumn_from "$OUT/byol/final"
done
run_stage fewshot results.json "${LAUNCH[@]}" regress.py "${DATA[@]}" "${REG[@]}" "${FEW[@]}" \
    --features_from "$OUT/distill/final" --hypercolumn_from "$OUT/byol/final"
# matching: the benchmark (Table 1) and one picture across identities
run_stage match matching.json "${LAUNCH[@]}" match.py --benchmark "${DATA[@]}" "${MATCH[@]}" \
    --model "$OUT/distill/final" "$OUT/byol/final" nmf:64 random-resnet18 --hypercolumn_from "$OUT/byol/final"
$PY match.py "${DATA[@]}" --model "$OUT/distill/final" --ref test:0 --query test:7 --heatmap 0 --out "$OUT/match.png"
$PY -m common.demo_report "$OUT" $([ "$QUICK" = 1 ] && echo --quick)
