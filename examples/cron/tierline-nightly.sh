#!/usr/bin/env bash
# Nightly tierline run for cron: run the day's jobs at night (OpenAI / Anthropic jobs go to the
# providers' batch APIs at half price), resume if the run died, collect the batches in the
# morning. Everything is logged to one file; cron itself stays silent.
#
# crontab -e   (the paths are examples: point them at your checkout)
#   30 22 * * *  /srv/tierline/examples/cron/tierline-nightly.sh           # run; submit batches
#   0  2  * * *  /srv/tierline/examples/cron/tierline-nightly.sh           # resume a run that died
#   0  7  * * *  /srv/tierline/examples/cron/tierline-nightly.sh collect   # fetch ended batches
#
# Running it again is always safe: tierline's own lock turns an overlapping run into exit 5
# (logged, nothing done), an interrupted run resumes from its .partial file, and a finished one
# is left alone until the job file or the config changes.
#
# Settings come from the environment; the defaults are relative to examples/.
set -uo pipefail   # no -e: every tierline exit code is handled below

export PATH="$HOME/.local/bin:/usr/local/bin:/usr/bin:/bin:$PATH"   # cron's PATH is minimal
TIERLINE=${TIERLINE:-tierline}
JOBS=${NIGHTLY_JOBS:-workload.jsonl}
CONFIG=${NIGHTLY_CONFIG:-configs/hybrid.toml}
OUT=${NIGHTLY_OUT:-out/nightly.results.jsonl}
LEDGER=${NIGHTLY_LEDGER:-out/nightly.db}
LOG=${NIGHTLY_LOG:-out/nightly.log}
MAX_COST=${NIGHTLY_MAX_COST:-}           # e.g. 25: never spend more than $25 a night
PROVIDER_BATCH=${NIGHTLY_PROVIDER_BATCH:-1}   # 0: the APIs answer synchronously instead
MODE=${1:-run}

cd "$(dirname "$0")/.." || exit 2
mkdir -p "$(dirname "$OUT")" "$(dirname "$LEDGER")" "$(dirname "$LOG")"
exec >>"$LOG" 2>&1
log() { printf '%s tierline-nightly[%s] %s: %s\n' "$(date -u +%FT%TZ)" "$$" "$MODE" "$*"; }

count() { grep -c "\"status\":\"$1\"" "$OUT" 2>/dev/null || true; }

if [ "$MODE" = run ] && [ -f "$OUT" ] && [ "$OUT" -nt "$JOBS" ] && [ "$OUT" -nt "$CONFIG" ]; then
  if [ "$(count pending)" = 0 ]; then
    log "up to date: $OUT is newer than $JOBS and $CONFIG; nothing to do"
    exit 0
  fi
  MODE=collect   # a finished run with pending batch lines: only collecting is left to do
fi

if [ "$MODE" = collect ]; then
  "$TIERLINE" batch collect -c "$CONFIG" --ledger "$LEDGER" --quiet
elif [ "$MODE" = run ]; then
  args=(run "$JOBS" -c "$CONFIG" --ledger "$LEDGER" -o "$OUT" --quiet)
  [ "$PROVIDER_BATCH" = 1 ] && args+=(--provider-batch)
  [ -n "$MAX_COST" ] && args+=(--max-cost "$MAX_COST")
  "$TIERLINE" "${args[@]}"
else
  log "usage: $0 [run|collect]"
  exit 2
fi
code=$?

case $code in
  0)  # every job ok (for collect: every collected batch job ok, or nothing was pending)
      log "ok: $(count ok) result(s) in $OUT"; exit 0 ;;
  1)  # finished, but some jobs failed or were invalid; each one is in $OUT with its error
      log "done with failures: $(count error) error, $(count invalid) invalid in $OUT"; exit 1 ;;
  2)  # usage or config error (bad config, unreadable job file): nothing was sent
      log "usage or config error (exit 2); nothing was dispatched"; exit 2 ;;
  3)  # --max-cost: jobs that did not fit are 'skipped_budget' in $OUT; raise the cap and
      # touch $JOBS to run again
      log "stopped by the budget (\$$MAX_COST): $(count skipped_budget) job(s) skipped"; exit 3 ;;
  4)  # jobs wait in provider batches (normal at night): the 07:00 'collect' fetches them
      log "pending: $(count pending) job(s) in provider batches; collect later"; exit 0 ;;
  5)  # another tierline run holds the lock on $OUT (yesterday's still running?): leave it be
      log "another run is writing $OUT; nothing done"; exit 0 ;;
  74) # the results could not be written (disk full): free space; the next run resumes
      log "cannot write $OUT (exit 74); the next invocation resumes from $OUT.partial"; exit 74 ;;
  70) # a bug in tierline: rerun by hand with TIERLINE_DEBUG=1 for the traceback, and report it
      log "internal error (exit 70)"; exit 70 ;;
  130|143)  # SIGINT / SIGTERM (shutdown, OOM killer's friends): the next run resumes
      log "interrupted (exit $code); the next invocation resumes from $OUT.partial"; exit "$code" ;;
  *)  log "unexpected exit $code"; exit "$code" ;;
esac
