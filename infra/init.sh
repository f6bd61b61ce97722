#!/bin/sh
# The compose stack's one-shot init job: a dataset, its features in Feast, the history in
# Kafka, the first models.
# Every step is skipped when its result is already on the volume, so re-running the job
# (`docker compose up` again, or `docker compose run init`) changes nothing.
#
# The dataset: the first CSV or parquet file in ./import (mounted at IMPORT_DIR, /import),
# imported with IMPORT_MAP (see `fraudctl import --help`), or else a simulated one.
set -eu
data="$FRAUD_VAR_DIR/data"

if [ -f "$data/manifest.json" ]; then
  echo "init: dataset present in $data"
else
  import_dir="${IMPORT_DIR:-/import}"
  file=$(find "$import_dir" -maxdepth 1 -type f \( -name '*.csv' -o -name '*.csv.gz' -o -name '*.parquet' \) 2>/dev/null | sort | head -n 1 || true)
  if [ -n "$file" ]; then
    echo "init: importing $file"
    # FIELD=COLUMN,...: by default the file's columns have the event schema's own names.
    fraudctl import "$file" --out "$data" --map "${IMPORT_MAP:-transaction_id=transaction_id,event_time=event_time,card_id=card_id,merchant_id=merchant_id,amount=amount,is_fraud=is_fraud}"
  else
    echo "init: simulating ${FRAUD_DEMO_DAYS:-42} days"
    fraudctl simulate --out "$data"
  fi
fi

# The gateway replays the last GATEWAY_DAYS days through the scoring service; the online
# store holds what was known before them.
days="${GATEWAY_DAYS:-1}"
# The midnight that starts them (`backfill --hold-back-days` cuts there too).
cut=$(python -c "from core.dataset import read_transactions; from pipelines.backfill import online_cut; print(online_cut(read_transactions('$data'), $days).strftime('%Y-%m-%d'))")

# Before any stream processor starts (they wait for this job): Feast's Redis store skips a
# write whose event time is not newer than the stored one, so a backfill after the stream
# had written would be a silent no-op.
if [ -f "$FRAUD_VAR_DIR/.backfilled" ]; then
  echo "init: features already backfilled"
else
  fraudctl backfill --data "$data" --hold-back-days "$days"
  touch "$FRAUD_VAR_DIR/.backfilled"
fi

# The stream processors rebuild their state (each card's 30-day history) from the topics, not
# from the online store: without the history before the cut in the topic, a card's first
# write would replace its backfilled 30-day features with a few hours' worth.
if [ -f "$FRAUD_VAR_DIR/.history-published" ]; then
  echo "init: history already published"
else
  echo "init: publishing the history before $cut for the stream processors"
  fraudctl replay --from "$data" --until "$cut" --no-labels-after-end >/dev/null
  touch "$FRAUD_VAR_DIR/.history-published"
fi

if fraudctl models --json | python -c 'import json, sys; versions = json.load(sys.stdin)["versions"]; sys.exit(0 if any("champion" in v["aliases"] for v in versions) else 1)'; then
  echo "init: a champion is registered"
else
  fraudctl train --data "$data" --promote
fi
