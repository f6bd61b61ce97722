#!/bin/sh
# The payment gateway of `fraudctl up` (both profiles): `fraudctl replay --score` of the last
# GATEWAY_DAYS days, which the init job held back from the online store, through
# GATEWAY_SCORE_URL (compose: the load balancer), at GATEWAY_RPS, over and over, so the
# dashboards move. Each pass sends the same transactions again: the scoring service scores
# them again, while the stream processor and the monitor drop them as duplicates (by
# transaction_id) after the first pass. Once the replayed event time is a maturity
# (FRAUD_MATURITY_DAYS) past a day, that day's matured metrics appear.
set -eu
data="$FRAUD_VAR_DIR/data"
days="${GATEWAY_DAYS:-1}"
# The held-back days start at the midnight infra/init.sh cut at (`backfill --hold-back-days`).
after=$(python -c "from core.dataset import read_transactions; from pipelines.backfill import online_cut; print(online_cut(read_transactions('$data'), $days).strftime('%Y-%m-%d'))")
while true; do
  touch "${GATEWAY_ALIVE_FILE:-/tmp/gateway-alive}"
  echo "gateway: replaying the transactions after $after at ${GATEWAY_RPS} req/s"
  fraudctl replay --from "$data" --after "$after" --rps "$GATEWAY_RPS" --score "${GATEWAY_SCORE_URL:-http://lb:8000}" &
  pass=$!
  while kill -0 "$pass" 2>/dev/null; do touch "${GATEWAY_ALIVE_FILE:-/tmp/gateway-alive}"; sleep 30; done
  wait "$pass"
done
