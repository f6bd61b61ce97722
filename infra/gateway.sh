#!/bin/sh
# The payment gateway of `fraudctl up` (both profiles): `fraudctl replay --score` of the last
# GATEWAY_DAYS days, which the init job held back from the online store, through
# GATEWAY_SCORE_URL (compose: the load balancer), at GATEWAY_RPS, in a loop, so the
# dashboards move. Pass N publishes the same days N x GATEWAY_DAYS later under new ids
# (suffix -pN): time goes on, and the stream processor, the monitor and the scoring service
# see new traffic, not resends. Once the replayed event time is a maturity
# (FRAUD_MATURITY_DAYS) past a day, that day's matured metrics appear.
set -eu
data="$FRAUD_VAR_DIR/data"
days="${GATEWAY_DAYS:-1}"
# The held-back days start at the midnight infra/init.sh cut at (`backfill --hold-back-days`).
after=$(python -c "from core.dataset import read_transactions; from pipelines.backfill import online_cut; print(online_cut(read_transactions('$data'), $days).strftime('%Y-%m-%d'))")
pass=0
replay=""
# As PID 1 of its container, sh ignores a SIGTERM it has no trap for: `docker compose down`
# would wait 10 s and kill it.
trap '[ -n "$replay" ] && kill "$replay" 2>/dev/null; exit 0' TERM INT
while true; do
  touch "${GATEWAY_ALIVE_FILE:-/tmp/gateway-alive}"
  echo "gateway: pass $pass, the $days days after $after, $((pass * days)) days later, at ${GATEWAY_RPS} req/s"
  suffix=""
  [ "$pass" -gt 0 ] && suffix="-p$pass"
  fraudctl replay --from "$data" --after "$after" --rps "$GATEWAY_RPS" --score "${GATEWAY_SCORE_URL:-http://lb:8000}" \
    --shift-days "$((pass * days))" --id-suffix "$suffix" &
  replay=$!
  # `wait` returns at once on a trapped signal; a foreground sleep would hold the trap back.
  while kill -0 "$replay" 2>/dev/null; do touch "${GATEWAY_ALIVE_FILE:-/tmp/gateway-alive}"; sleep 30 & wait $!; done
  wait "$replay"
  pass=$((pass + 1))
done
