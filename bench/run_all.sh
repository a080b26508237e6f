#!/usr/bin/env bash
# Every benchmark behind docs/RESULTS.md, in order, on ../shared/datasets/all4; JSON into bench/results/.
# Then `python bench/make_results.py` writes docs/RESULTS.md and its plots from those files.
#   bash bench/run_all.sh [CACHE_DIR]     (a warm embedding cache saves about 3 minutes per backbone pair)
# With XINCEPT_BENCH_WEIGHTS=W (a folder from `xincept-client stage-weights --from-keras FILE --out W`) the ImageNet
# rows run too: Xception with Keras' ImageNet weights, InceptionV3 random (labelled) while W has no inception_v3 file.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${1:-${XINCEPT_CACHE_DIR:-$HOME/.cache/xincept}}"
data="${XINCEPT_BENCH_DATA:-../shared/datasets/all4}"
res=bench/results
mkdir -p "$res"
only="${XINCEPT_BENCH_ONLY:-}"  # e.g. "centralized scale": run only these (names as in bench/results/NAME.json)
run() {
  local name=$1; shift
  if [[ -n "$only" && " $only " != *" $name "* ]]; then return 0; fi
  echo "== $name: $*" >&2
  if "$@" > "$res/$name.json.tmp"; then mv "$res/$name.json.tmp" "$res/$name.json"
  else echo "   $name failed; its JSON (with the error) is kept" >&2; mv "$res/$name.json.tmp" "$res/$name.json"; fi
}
fed() { local name=$1; shift; run "fed_$name" python bench/federation.py --name "$name" --data "$data" --cache-dir "$cache" "$@"; }
weights="${XINCEPT_BENCH_WEIGHTS:-}"
imagenet() {  # ImageNet Xception alone (what a site without InceptionV3 weights runs; see README)
  local name=$1; shift
  [[ -n "$weights" ]] && fed "imagenet_$name" --weights-dir "$weights" "$@" -- --backbones legacy_xception
  return 0
}
if [[ -n "$weights" ]]; then
  run centralized python bench/centralized.py --data "$data" --cache-dir "$cache" --weights-dir "$weights"
  imagenet dirichlet_cv --folds 5 --sites 4 --partition dirichlet:0.5 --no-loso
  imagenet iid_cv --folds 5 --sites 4 --partition iid --no-loso
  imagenet labelskew_cv --folds 5 --sites 4 --partition label-skew:2 --no-loso
  imagenet dirichlet --sites 4 --partition dirichlet:0.5      # fold 0 with leave-one-site-out (cross-site validation)
  for eps in 8 3 1; do imagenet "dp${eps}_cv" --folds 5 --sites 4 --partition iid --no-loso --dp-epsilon "$eps"; done
  # whole-model DP (every release covered) embeds at 299 px: its non-private reference, the same federation at 299 px
  fed imagenet299_iid_cv --weights-dir "$weights" --folds 5 --sites 4 --partition iid --no-loso -- --backbones legacy_xception --input-size 299
  # ... and the DP rows beside it, after it (it reads its non-private accuracy)
  run dp_end_to_end python bench/dp_end_to_end.py --data "$data" --cache-dir "$cache" --weights-dir "$weights"
  run dp_run_mode python bench/dp_run_mode.py --data "$data" --cache-dir "$cache" --weights-dir "$weights"
fi

run dp python bench/dp.py
# grouped 5-fold CV (simulate --test-fold 0..4), pooled over every image
fed dirichlet_cv --folds 5 --sites 4 --partition dirichlet:0.5 --no-loso
fed iid_cv --folds 5 --sites 4 --partition iid --no-loso
fed labelskew_cv --folds 5 --sites 4 --partition label-skew:2 --no-loso
fed dirichlet --sites 4 --partition dirichlet:0.5          # the issue's command as is: fold 0, with leave-one-site-out
for seed in 1 2; do fed "dirichlet_seed$seed" --sites 4 --partition dirichlet:0.5 --no-loso --seed "$seed"; done
fed iid_timing --sites 4 --partition iid --no-loso --no-reference   # wall time of the federation alone
fed iid_timing_1head --sites 4 --partition iid --no-loso --no-reference --head-members 1   # ... with one head (a third of the rounds)
fed bagging_iid_cv --folds 5 --sites 4 --partition iid --xgb-mode bagging --no-loso
fed bagging_dirichlet_cv --folds 5 --sites 4 --partition dirichlet:0.5 --xgb-mode bagging --no-loso
for eps in 8 3 1; do fed "dp${eps}_cv" --folds 5 --sites 4 --partition iid --no-loso --dp-epsilon "$eps"; done
[[ -z "$weights" ]] && run centralized python bench/centralized.py --data "$data" --cache-dir "$cache"
run ablation python bench/ablation.py --data "$data" --cache-dir "$cache"   # the fused head, one change at a time
run walltime python bench/fed_vs_central.py --data "$data" --cache-dir "$cache"   # back to back, one run
run deployed python bench/deployed.py --data "$data" --cache-dir "$cache" --per-site 150 --rounds 20 --rtt-ms 0,50 --secure-aggregation   # stock processes at 0 and 50 ms RTT, plain and with secure aggregation, vs simulation
run scale python bench/scale.py --data "$data" --cache-dir "$cache"
run scale_32 python bench/scale.py --data "$data" --cache-dir "$cache" --sites 32 --group-block 5
echo "done: $res" >&2
