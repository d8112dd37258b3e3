#!/usr/bin/env bash
# Reproduce docs/recipes.md's RadBench table in one command (slow on CPU: one
# EfficientNet-Lite0 pass over RadBench, ~15-50 min on 2 busy cores; cached after).
#   bash benchmarks/recipe_radbench.sh [OUT_DIR]
# 1. one pass caching every candidate feature block  -> .cache/recipes/*.npz
# 2. per feature set: tune the recipe on val (train index), report test -> recipe-*.json
# 3. radsearch evaluate (plain and with the chosen recipe) + radsearch compare
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/recipes}
CSV=../shared/radbench/radbench.csv
SETS=${SETS:-head-avg,b7-avg+b10-avg+b14-avg,b10-avg+b14-grid2}  # FEATURE_SETS names
python benchmarks/recipe_radbench.py embed s224
python benchmarks/recipe_radbench.py final --sets "$SETS"
mkdir -p "$OUT"
runs=()
for s in ${SETS//,/ }; do
  npz=.cache/recipes/efficientnet-lite0-$s-s224.npz
  recipe=.cache/recipes/recipe-efficientnet-lite0-$s.json
  for mode in plain recipe; do
    extra=(); [ "$mode" = recipe ] && extra=(--recipe "$recipe")
    radsearch evaluate "$CSV" --embeddings "$npz" "${extra[@]}" --out "$OUT/$s-$mode" \
      --label-column label --max-k 10 --index-fractions none --quality-sample 0 --map none \
      --no-probe --gallery 0 --no-report --no-progress
    runs+=("$OUT/$s-$mode")
  done
done
radsearch compare "${runs[@]}" --out "$OUT/compare"
