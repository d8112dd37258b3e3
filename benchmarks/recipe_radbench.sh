#!/usr/bin/env bash
# Reproduce docs/recipes.md's RadBench table in one command (slow on CPU: two
# EfficientNet-Lite0 passes over RadBench, plain and histogram-equalised, ~8-15 min
# each on 2 idle cores, ~45 min on busy ones; cached after).
#   bash benchmarks/recipe_radbench.sh [OUT_DIR]
# 1. one pass per view caching every candidate feature block -> .cache/recipes/*.npz
# 2. per view:feature set: tune the recipe on val (train index), report test -> recipe-*.json
# 3. radsearch evaluate (plain and with the chosen recipe) + radsearch compare
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/recipes}
CSV=../shared/radbench/radbench.csv
# VIEW:FEATURE_SET pairs (views: s224 plain, s224h histogram-equalised)
RUNS=${RUNS:-s224:head-avg s224:b10-avg+b14-grid2 s224h:b4-avg+b7-avg+b10-avg+b14-grid2}
mkdir -p "$OUT"
runs=()
for pair in $RUNS; do
  view=${pair%%:*}; s=${pair#*:}
  python benchmarks/recipe_radbench.py embed "$view"
  python benchmarks/recipe_radbench.py final --views "$view" --sets "$s"
  npz=.cache/recipes/efficientnet-lite0-$s-$view.npz
  recipe=.cache/recipes/recipe-efficientnet-lite0-$s.json
  for mode in plain recipe; do
    extra=(); [ "$mode" = recipe ] && extra=(--recipe "$recipe")
    radsearch evaluate "$CSV" --embeddings "$npz" "${extra[@]}" --out "$OUT/$view-$s-$mode" \
      --label-column label --max-k 10 --index-fractions none --quality-sample 0 --map none \
      --no-probe --gallery 0 --no-report --no-progress
    runs+=("$OUT/$view-$s-$mode")
  done
done
radsearch compare "${runs[@]}" --out "$OUT/compare"
