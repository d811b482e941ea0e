#!/usr/bin/env bash
# Smoke check for the kube-apiserver built by scripts/kube-apiserver.sh: starts Debian's etcd and
# the apiserver on loopback (random ports, temp dirs), waits for /readyz, runs `kubectl get ns`,
# then stops both and removes everything it made (trap, also on failure or Ctrl-C).
# Needs no Rust. Rerun any time: the build itself is cached.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "kube-apiserver-smoke.sh: $*" >&2; }

BIN="$(scripts/kube-apiserver.sh | tail -n 1)"
command -v kubectl >/dev/null || { log "error: kubectl is not on PATH"; exit 1; }

tmp="$(mktemp -d)"
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ]; then
    for f in "$tmp"/*.log; do
      [ -f "$f" ] && { echo "--- last lines of $(basename "$f")" >&2; tail -n 20 "$f" >&2; }
    done
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports, chosen by the kernel (a tiny race with other processes is acceptable here).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
etcd_client=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)

# etcd: every URL on 127.0.0.1, so nothing listens beyond loopback.
etcd --name smoke --data-dir "$tmp/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "smoke=http://127.0.0.1:$etcd_peer" >"$tmp/etcd.log" 2>&1 &
pids+=($!)

# Credentials: one admin token in system:masters; a service-account key pair (required flags).
token="$(openssl rand -hex 16)"
echo "$token,admin,admin,system:masters" >"$tmp/tokens.csv"
openssl genrsa -out "$tmp/sa.key" 2048 2>/dev/null
openssl rsa -in "$tmp/sa.key" -pubout -out "$tmp/sa.pub" 2>/dev/null

# The service range is only an allocation range: no traffic goes there.
"$BIN" --etcd-servers="http://127.0.0.1:$etcd_client" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" --insecure-port=0 \
  --cert-dir="$tmp/certs" --token-auth-file="$tmp/tokens.csv" --authorization-mode=RBAC \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$tmp/sa.pub" --service-account-signing-key-file="$tmp/sa.key" \
  --service-cluster-ip-range=10.231.0.0/24 --enable-priority-and-fairness=false \
  >"$tmp/kube-apiserver.log" 2>&1 &
api_pid=$!
pids+=("$api_pid")

server="https://127.0.0.1:$api_port"
start=$SECONDS
until curl -ksf -H "Authorization: Bearer $token" "$server/readyz" >/dev/null 2>&1; do
  kill -0 "$api_pid" 2>/dev/null || { log "error: kube-apiserver exited early"; exit 1; }
  [ $((SECONDS - start)) -lt 60 ] || { log "error: /readyz not ok after 60 s"; exit 1; }
  sleep 0.5
done
log "/readyz ok after $((SECONDS - start)) s on $server"

kubectl --server "$server" --token "$token" --insecure-skip-tls-verify get ns
log "ok"
