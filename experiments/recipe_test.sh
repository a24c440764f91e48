#!/usr/bin/env bash
# Issue 30: a recipe's figures on the test splits, with demo.sh --real's own evaluation flags, for stage-1 and
# stage-2 models trained elsewhere (experiments/scaling.sh): matching on the AFLW test faces (this repository's
# protocol and DVE's) and on AFW (68 points), and the regression MTFL -> AFLW_M test (DVE's crop). The supervised
# ceiling, the few-shot curve and the 68-point regressor of demo.sh are left out (they do not compare features).
# MODEL ... lists what is evaluated (default: STAGE2_DIR, its stage-1 hypercolumn and the untrained network).
#   bash experiments/recipe_test.sh DATA_DIR OUT STAGE2_DIR [MODEL ...]      # -> OUT/{match_aflw,...}/
# Finished parts are skipped and an interrupted regression resumed, so it can be run again.
set -euo pipefail
D=${1:?usage: bash experiments/recipe_test.sh DATA_DIR OUT STAGE2_DIR [MODEL ...]}; OUT=${2:?OUT}; S2=${3:?STAGE2_DIR}
shift 3
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
MODELS=("$@")
[ $# -gt 0 ] || MODELS=("$S2" "$($PY -c "import json, sys; print(json.load(open(sys.argv[1]))['init_from'])" \
    "$(dirname "$S2")/args.json")" random-resnet18)
MTFL=(--dataset mtfl --data_dir "$D/mtfl" --image_size 128)
mkdir -p "$OUT"
part() {        # part NAME DONE COMMAND...: skipped when OUT/NAME/DONE exists; wall seconds into OUT/times.tsv
    local name=$1 done=$2 t0=$SECONDS
    shift 2
    [ -f "$OUT/$name/$done" ] && return
    "$@" --output_dir "$OUT/$name"
    printf '%s\t%s\n' "$name" $((SECONDS - t0)) >> "$OUT/times.tsv"
}
part match_aflw matching.json $PY match.py --benchmark "${MTFL[@]}" --pairs 300 --size 64 --model "${MODELS[@]}"
part match_afw matching.json $PY match.py --benchmark --dataset ptsfolder --data_dir "$D/afw" --split all \
    --image_size 128 --pairs 300 --size 64 --model "${MODELS[@]}"
part match_aflw_dve matching.json $PY match.py --benchmark "${MTFL[@]}" --protocol dve --model "${MODELS[@]}"
part regress results.json $PY regress.py "${MTFL[@]}" --protocol dve --epochs 2 --min_steps 300 --eval_every 100 \
    --features_from "${MODELS[@]}" $([ -d "$OUT/regress" ] && echo --resume)
