#!/usr/bin/env bash
# Run a `latentrl sweep` on a many-core machine: every seed's SFT baseline as its own process, then
# each GRPO method of that seed as its own process (dropout_grpo and its equal-time control sft_more
# together, since sft_more takes dropout_grpo's wall time), then one last sweep over all seeds that
# finds every run finished and writes the table and plots.
#
#   bash scripts/sweep_parallel.sh CONFIG OUT "0 1 2" [key=value ...]
#
# LATENTRL is the command to call (default `latentrl`; e.g. "python3 -m latentrl.cli" without install).
# Logs: OUT/logs/seed<S>_<part>.txt. Processes share the machine, so wall times include that contention
# (the same for a seed's dropout_grpo and its sft_more, which run one after the other in one process).
# For many CPU cores, not for one GPU: seven GRPO processes sharing an H100 each ran 9x slower than one
# alone (docs/RESULTS.md §7); on one GPU run the seeds one after the other.
set -uo pipefail
cfg=$1 out=$2 seeds=$3
shift 3
run=${LATENTRL:-latentrl}
mkdir -p "$out/logs"

one_seed() {
    local s=$1 pids=() part methods
    shift
    $run sweep --config "$cfg" out="$out" "seeds=[$s]" "methods=[sft]" "$@" >"$out/logs/seed${s}_sft.txt" 2>&1 || {
        echo "seed $s: SFT baseline failed (see $out/logs/seed${s}_sft.txt)"; return 1; }
    for part in dropout_grpo grpo_sampling dropout_step greedy_none; do
        methods="[sft,$part]"
        [ "$part" = dropout_grpo ] && methods="[sft,dropout_grpo,sft_more]"
        $run sweep --config "$cfg" out="$out" "seeds=[$s]" "methods=$methods" "$@" >"$out/logs/seed${s}_${part}.txt" 2>&1 &
        pids+=($!)
    done
    local failed=0
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    [ $failed = 0 ] || echo "seed $s: a method failed (see $out/logs/seed${s}_*.txt)"
    return $failed
}

pids=()
for s in $seeds; do
    one_seed "$s" "$@" &
    pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
list=$(echo $seeds | tr ' ' ',')
$run sweep --config "$cfg" out="$out" "seeds=[$list]" "$@" >"$out/logs/table.txt" 2>&1 || status=1
cat "$out/table.md" 2>/dev/null
exit $status
