#!/usr/bin/env bash
# demo.sh OUTBOXD... - a scripted stream of orders through their whole
# lifecycle, driven through the CLI (the command prefix is the arguments).
set -euo pipefail
OUTBOXD=("$@")
run() { "${OUTBOXD[@]}" "$@"; }

customer=$(run customer register --name "Ada Lovelace" --email ada@example.com --phone "+44 20 7946 0000")
echo "demo: registered customer $customer"
for i in 1 2 3 4 5; do
  order=$(run order create --customer "$customer" --item "BOOK-$i:2:1999" --item "PEN-$i:10:150")
  echo "demo: order $order created"
  run order update-items "$order" --item "BOOK-$i:3:1999"
  if [ "$i" = 4 ]; then
    run order cancel "$order" --reason "customer changed their mind"
    continue
  fi
  run order confirm "$order"
  run order ship "$order" --tracking-number "TRK-$i-$RANDOM" --carrier DHL
  [ "$i" = 5 ] || run order deliver "$order" --signature "A. Lovelace"
done
run customer change-email "$customer" --email ada@lovelace.org
# Rejections are clear and change nothing:
run order create --customer "$customer" --item "BOOK-9:0:1999" 2>&1 | sed 's/^/demo (expected rejection): /' || true
run customer register --name X --email not-an-email 2>&1 | sed 's/^/demo (expected rejection): /' || true
