#!/bin/sh
# `make cluster`: PostgreSQL, NATS and three Busbar nodes on loopback, all
# data under ./cluster-data (kept between runs). Ctrl-C stops all of it.
# Usage: scripts/cluster.sh BUSBAR_BINARY
set -eu

busbar=$(realpath "$1")
top=$(pwd)/cluster-data
mkdir -p "$top"
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort | tail -n 1)

# PostgreSQL will not run as root: under root its commands run as `postgres`.
if [ "$(id -u)" = 0 ]; then
    as_pg() { runuser -u postgres -- "$@"; }
    chown postgres:postgres "$top"
else
    as_pg() { "$@"; }
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_port=$(free_port)
nats_port=$(free_port)
if [ ! -d "$top/pg" ]; then
    as_pg mkdir "$top/pg"
    as_pg "$pg_bin/initdb" -D "$top/pg" -U busbar -A trust >/dev/null
    # The node's user is trusted on loopback; the SQL databases' own roles
    # log in with their passwords.
    printf 'local all all trust\nhost all busbar 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n' |
        as_pg tee "$top/pg/pg_hba.conf" >/dev/null
fi
as_pg "$pg_bin/pg_ctl" -D "$top/pg" -w -l "$top/pg.log" \
    -o "-p $pg_port -k $top -c listen_addresses=127.0.0.1" start >/dev/null
nats=$(command -v nats-server || echo /usr/sbin/nats-server)
"$nats" -a 127.0.0.1 -p "$nats_port" >"$top/nats.log" 2>&1 &
nats_pid=$!

pids=""
stop() {
    trap - INT TERM EXIT
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    wait $pids 2>/dev/null || true
    kill "$nats_pid" 2>/dev/null || true
    as_pg "$pg_bin/pg_ctl" -D "$top/pg" -w -m fast stop >/dev/null 2>&1 || true
    echo "cluster stopped"
}
trap stop INT TERM EXIT

store="postgres://busbar@127.0.0.1:$pg_port/postgres"
bus="nats://127.0.0.1:$nats_port"
addresses=""
for n in 1 2 3; do
    mkdir -p "$top/node$n"
    "$busbar" serve --data "$top/node$n/data" --listen 127.0.0.1:0 \
        --metrics-listen off --ws-listen 127.0.0.1:0 --store "$store" --bus "$bus" \
        >"$top/node$n/stdout" 2>"$top/node$n/log" &
    pids="$pids $!"
    # One after another: the first makes the cluster's admin and CA.
    until grep -q "^try: " "$top/node$n/stdout" 2>/dev/null; do
        if ! kill -0 "$!" 2>/dev/null; then
            cat "$top/node$n/log"
            exit 1
        fi
        sleep 0.2
    done
    address=$(sed -n 's/.* serving on \([^ ]*\).*/\1/p' "$top/node$n/stdout")
    addresses="$addresses $address"
done

# The admin config of the node that made the admin, naming every node: a
# client uses the first that answers and moves on when it goes.
python3 - "$top/node1/data/admin.json" "$top/client.json" $addresses <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["address"], config["addresses"] = sys.argv[3], sys.argv[4:]
with open(sys.argv[2], "w") as out:
    json.dump(config, out, indent=2)
PY
chmod 600 "$top/client.json"
echo "store: PostgreSQL on 127.0.0.1:$pg_port; bus: NATS on 127.0.0.1:$nats_port"
echo "nodes:$addresses"
echo "admin config naming every node: $top/client.json"
echo "try: ./target/release/busbar --config $top/client.json status"
echo "Ctrl-C stops the cluster"
wait $pids
