#!/usr/bin/env bash
# tierline in shell pipelines, with jq. Each numbered snippet stands alone; run them all with
#
#   TIERLINE_CONFIG=configs/hybrid.toml bash pipelines.sh [JOBS]     (from examples/)
#
# tierline finds its config in --config, $TIERLINE_CONFIG or ./tierline.toml, so the snippets
# need no -c. Results go to stdout unless -o is given; messages and summaries go to stderr.
set -euo pipefail
cd "$(dirname "$0")"   # paths below are relative to examples/
JOBS=${1:-workload.jsonl}
OUT=${OUT:-out/pipelines}
mkdir -p "$OUT"

# 1. Tier every job without sending anything: how they split into tiers, and why.
tierline classify "$JOBS" -o "$OUT/classified.jsonl" -q
jq -r '.tier' "$OUT/classified.jsonl" | sort | uniq -c
jq -r 'select(.tier == 3) | "\(.id)\t\(.why)"' "$OUT/classified.jsonl"

# 2. Pick jobs with jq, tier them, keep those that need more than the small model, run them.
#    classify's output is valid run input: the tier it chose travels along as an override.
jq -c 'select(.metadata.queue == "helpdesk")' "$JOBS" \
  | tierline classify - \
  | jq -c 'select(.tier >= 2)' \
  | tierline run - -q > "$OUT/helpdesk-hard.results.jsonl"

# 3. Split the classified file by tier, then run each tier when it suits you (tier 1 now, the
#    rest tonight). Running classified lines keeps the tiers chosen in 1.
for tier in 1 2 3; do
  jq -c --argjson t "$tier" 'select(.tier == $t)' "$OUT/classified.jsonl" > "$OUT/tier$tier.jsonl"
done
tierline run - -q < "$OUT/tier1.jsonl" > "$OUT/tier1.results.jsonl"

# 4. The whole file, resumable (rerun the same line after a crash), then total cost with jq.
#    Exit 1 only means some jobs failed: they are in the results with their error.
#    cost_usd is null when a price is unknown: count those apart, never as $0.
tierline run "$JOBS" -o "$OUT/results.jsonl" -q || [ $? -eq 1 ]
jq -s '{jobs: length,
        ok: map(select(.status == "ok")) | length,
        cost_usd: map(.cost_usd // 0) | add,
        unpriced: map(select(.cost_usd == null)) | length}' "$OUT/results.jsonl"

# 5. Cost, tokens and jobs per tier and backend, from the results alone.
jq -s 'group_by([.tier, .backend]) | map({tier: .[0].tier, backend: .[0].backend, jobs: length,
        tokens_out: map(.usage.output_tokens) | add, cost_usd: map(.cost_usd // 0) | add})' \
  "$OUT/results.jsonl"

# 6. Results come in completion order; put them back in input order, and list what failed.
jq -s -c 'sort_by(.line)[] | {id, status, output}' "$OUT/results.jsonl" > "$OUT/in-order.jsonl"
jq -c 'select(.status != "ok") | {id, status, error}' "$OUT/results.jsonl"

# 7. Retry only the jobs that failed: join the results back to the job lines by id.
jq -c --slurpfile r "$OUT/results.jsonl" \
  '($r | map(select(.status != "ok") | .id)) as $bad | select(.id as $i | $bad | index($i))' \
  "$JOBS" > "$OUT/retry.jsonl"
if [ -s "$OUT/retry.jsonl" ]; then
  tierline run "$OUT/retry.jsonl" -o "$OUT/retry.results.jsonl" -q || [ $? -eq 1 ]
fi

# 8. Shard one file across hosts: host I of N runs its shard with its own results and ledger.
#    Here the N "hosts" are background jobs; on real hosts each runs one line (e.g. over ssh).
N=2
pids=()
for I in $(seq 1 $N); do
  tierline run "$JOBS" --shard "$I/$N" -o "$OUT/shard-$I.jsonl" --ledger "$OUT/shard-$I.db" -q &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done   # fails like its shard did
cat "$OUT"/shard-*.jsonl | jq -s -c 'sort_by(.line)[]' > "$OUT/sharded.results.jsonl"
tierline ledger merge "$OUT"/shard-*.db -o "$OUT/merged.db" -q
tierline ledger summary --ledger "$OUT/merged.db" --by backend

# 9. A file written for OpenAI's Batch API runs unchanged; turn the results back into Batch
#    output lines (custom_id + response body) for tools that expect them.
tierline run openai-batch.jsonl -q \
  | jq -c '{custom_id: .id,
            response: (if .status == "ok" then {status_code: 200, body: {model: .model,
              choices: [{index: 0, message: {role: "assistant", content: .output},
                         finish_reason: .finish_reason}],
              usage: {prompt_tokens: .usage.input_tokens, completion_tokens: .usage.output_tokens}}}
              else null end),
            error: .error}' > "$OUT/openai-batch.output.jsonl"
