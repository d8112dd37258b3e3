#!/usr/bin/env bash
# Reproduce docs/recipes.md's RadBench table in one command (slow on CPU: one
# EfficientNet pass over RadBench per arch and view, ~8-30 min each on 2 cores;
# cached after).
#   bash benchmarks/recipe_radbench.sh [OUT_DIR]
# 1. one pass per view caching every candidate feature block -> .cache/recipes/*.npz
# 2. per arch:view:feature set: tune the recipe on val (train index), report test -> recipe-*.json
# 3. radsearch evaluate (plain and with the chosen recipe), the fusion of the two
#    equalised variants (tune + evaluate), radsearch compare (table + plot)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/recipes}
CSV=../shared/radbench/radbench.csv
# ARCH:VIEW:FEATURE_SET (views: s224/s260 plain, s224h/s260h histogram-equalised);
# the last two are the registered efficientnet-lite0-deep-eq and efficientnet-lite2-deep-eq
RUNS=${RUNS:-lite0:s224:head-avg lite0:s224:b10-avg+b14-grid2 lite0:s224h:b4-avg+b7-avg+b10-avg+b14-grid2 lite2:s260h:b7-avg+b10-avg+b14-grid2}
mkdir -p "$OUT"
runs=()
# score_runs NAME NPZ RECIPE: radsearch evaluate plain and with RECIPE -> $OUT/NAME-{plain,recipe}
score_runs() {
  for mode in plain recipe; do
    extra=(); [ "$mode" = recipe ] && extra=(--recipe "$3")
    radsearch evaluate "$CSV" --embeddings "$2" "${extra[@]}" --out "$OUT/$1-$mode" \
      --label-column label --max-k 10 --index-fractions none --quality-sample 0 --map none \
      --no-probe --gallery 0 --no-report --no-progress
    runs+=("$OUT/$1-$mode")
  done
}
for spec in $RUNS; do
  IFS=: read -r arch view s <<< "$spec"
  arch=efficientnet-$arch
  python benchmarks/recipe_radbench.py embed "$view" --arch "$arch"
  python benchmarks/recipe_radbench.py final --arch "$arch" --views "$view" --sets "$s"
  score_runs "$arch-$view-$s" ".cache/recipes/$arch-$s-$view.npz" ".cache/recipes/recipe-$arch-$s.json"
done
# the fusion of the two equalised variants: their vectors concatenated (each unit length,
# weight 1/sqrt 2, as --model fusion:efficientnet-lite0-deep-eq+efficientnet-lite2-deep-eq)
L0=.cache/recipes/efficientnet-lite0-b4-avg+b7-avg+b10-avg+b14-grid2-s224h.npz
L2=.cache/recipes/efficientnet-lite2-b7-avg+b10-avg+b14-grid2-s260h.npz
if [ -f "$L0" ] && [ -f "$L2" ]; then
  python - "$L0" "$L2" "$OUT/fusion-deep-eq.npz" <<'PY'
import sys
import numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
assert (a["filepath"] == b["filepath"]).all()
emb = np.concatenate([a["emb"], b["emb"]], 1) / np.sqrt(2)
np.savez(sys.argv[3], emb=emb.astype(np.float32), filepath=a["filepath"])
PY
  radsearch tune "$CSV" --embeddings "$OUT/fusion-deep-eq.npz" --out "$OUT/fusion-deep-eq-recipe.json" --quiet --no-progress
  score_runs fusion-deep-eq "$OUT/fusion-deep-eq.npz" "$OUT/fusion-deep-eq-recipe.json"
fi
radsearch compare "${runs[@]}" --out "$OUT/compare"
