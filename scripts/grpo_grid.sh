#!/usr/bin/env bash
# A pilot grid of GRPO settings on the scarce-demonstration baselines, every (setting, seed) as its own
# process, each stopped after TIMEOUT seconds (its log keeps the validation curve so far):
#
#   TIMEOUT=480 bash scripts/grpo_grid.sh GRID OUT "1 3 4"
#
# GRID has one setting per line, `name key=value ...` (overrides of BASE, default configs/grpo_scarce.yaml;
# `#` starts a comment). Seed s starts from SFT/seed<s>/run1/final (SFT defaults to runs/scarce_local/sft)
# with prompts data_seed=1000+s. LATENTRL is the command (default `latentrl`). Validation curves (gain in
# greedy validation accuracy over step 0, mean over seeds) are printed at the end by scripts/grid_table.py.
# On one GPU, run settings one at a time: seven GRPO processes sharing an H100 ran 9x slower each than
# one alone (docs/RESULTS.md §7), so together they did less work than one process.
set -uo pipefail
grid=$1 out=$2 seeds=$3
run=${LATENTRL:-latentrl} sft=${SFT:-runs/scarce_local/sft} limit=${TIMEOUT:-600}
base=${BASE:-$(dirname "$0")/../configs/grpo_scarce.yaml}
mkdir -p "$out"
pids=()
while read -r name overrides; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    for s in $seeds; do
        dir="$out/$name/seed$s"
        mkdir -p "$dir"
        # shellcheck disable=SC2086
        timeout "$limit" $run grpo --config "$base" output_dir="$dir" \
            model_name_or_path="$sft/seed$s/run1/final" data_seed=$((1000 + s)) seed="$s" $overrides \
            >"$dir/stdout.txt" 2>&1 &
        pids+=($!)
    done
done <"$grid"
for p in "${pids[@]}"; do wait "$p"; done
python3 "$(dirname "$0")/grid_table.py" "$out"
