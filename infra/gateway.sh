#!/bin/sh
# The payment gateway of `fraudctl up` (both profiles): `fraudctl replay --score` of the day
# the init job held back from the online store, through GATEWAY_SCORE_URL (compose: the load
# balancer), at GATEWAY_RPS, over and over, so the dashboards move. Each pass sends the same
# transactions again: the scoring service scores them again, while the stream processor and
# the monitor drop them as duplicates (by transaction_id) after the first pass.
set -eu
data="$FRAUD_VAR_DIR/data"
# The held-back day starts at midnight of the data's last day (`backfill --hold-back-days 1`).
after=$(python -c "from core.dataset import read_transactions; print(read_transactions('$data')['event_time'].max().floor('D').strftime('%Y-%m-%d'))")
while true; do
  touch "${GATEWAY_ALIVE_FILE:-/tmp/gateway-alive}"
  echo "gateway: replaying the transactions after $after at ${GATEWAY_RPS} req/s"
  fraudctl replay --from "$data" --after "$after" --rps "$GATEWAY_RPS" --score "${GATEWAY_SCORE_URL:-http://lb:8000}" &
  pass=$!
  while kill -0 "$pass" 2>/dev/null; do touch "${GATEWAY_ALIVE_FILE:-/tmp/gateway-alive}"; sleep 30; done
  wait "$pass"
done
