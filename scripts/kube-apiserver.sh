#!/usr/bin/env bash
# Builds a real kube-apiserver v1.20.2 for Sluice's Kubernetes tests (issue 13), idempotently.
# No registry ships a kube-apiserver binary, so it is built from Debian's source package
# `kubernetes` (all Go dependencies vendored) with Debian's Go; see platform-facts.md.
# The build is slow (~400 s, 1.3 GB RSS, 2.1 GB disk), so it lives in a cache directory outside
# the clone, keyed by version, and is reused by every clone and every run.
# Also installs Debian's etcd (etcd-server), which the apiserver needs as its store.
# Progress goes to stderr; the last line of stdout is the binary's path.
set -euo pipefail

KUBE_VERSION=1.20.2
# Debian's version of the source package (bookworm, with its security fixes): pinned so the cache
# key means what it says. If Debian supersedes it, `apt-cache showsrc kubernetes` names the new one.
DEB_SRC_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE="${SLUICE_CACHE_DIR:-$HOME/.cache/sluice}/kube-apiserver-$KUBE_VERSION"
BIN="$CACHE/bin/kube-apiserver"
PACKAGES=(golang-go dpkg-dev rsync jq golang-github-modern-go-reflect2-dev etcd-server)

log() { echo "kube-apiserver.sh: $*" >&2; }

# apt needs root; use sudo when not root (CI runs without stdin, so sudo must not prompt).
SUDO=()
if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo -n); fi
export DEBIAN_FRONTEND=noninteractive

require_etcd() {
  if ! command -v etcd >/dev/null 2>&1; then
    log "error: etcd is not on PATH; install Debian's etcd-server package (apt-get install etcd-server)"
    exit 1
  fi
}

# Fast path: a built binary is already cached.
if [ -x "$BIN" ]; then
  require_etcd
  echo "$BIN"
  exit 0
fi

# --- packages -------------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

# `apt-get source` needs a deb-src entry; the image only has `deb` ones. Copy the first stanza of
# debian.sources with Types: deb-src (only if no deb-src entry exists yet).
need_src_entry=0
if ! grep -rqs -e '^Types:.*deb-src' -e '^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  need_src_entry=1
fi

if [ "${#missing[@]}" -gt 0 ] || [ "$need_src_entry" -eq 1 ]; then
  if [ "$need_src_entry" -eq 1 ]; then
    log "adding a deb-src entry (/etc/apt/sources.list.d/sluice-deb-src.sources)"
    awk 'BEGIN{RS=""} NR==1{sub(/Types:[^\n]*/, "Types: deb-src"); print; exit}' \
      /etc/apt/sources.list.d/debian.sources \
      | "${SUDO[@]}" tee /etc/apt/sources.list.d/sluice-deb-src.sources >/dev/null
  fi
  log "apt-get update"
  "${SUDO[@]}" apt-get update -qq >&2
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
fi
require_etcd

# --- source ---------------------------------------------------------------------------------
mkdir -p "$CACHE"
SRC="$CACHE/src/kubernetes-1.20.5+really1.20.2"
if [ ! -f "$SRC/.sluice-source-ok" ]; then
  # Fetch into a scratch directory and move into place, so an interrupted download never
  # looks like a complete source tree.
  log "fetching Debian source kubernetes=$DEB_SRC_VERSION into $CACHE/src"
  rm -rf "$CACHE/src" "$CACHE/src.tmp"
  mkdir -p "$CACHE/src.tmp"
  if ! (cd "$CACHE/src.tmp" && apt-get source -qq "kubernetes=$DEB_SRC_VERSION" >&2); then
    log "error: apt-get source kubernetes=$DEB_SRC_VERSION failed; available:" \
      "$(apt-cache showsrc kubernetes 2>/dev/null | sed -n 's/^Version: //p' | tr '\n' ' ')"
    rm -rf "$CACHE/src.tmp"
    exit 1
  fi
  mv "$CACHE/src.tmp" "$CACHE/src"
  [ -d "$SRC/vendor" ] || { log "error: unexpected source layout under $CACHE/src"; exit 1; }

  # Required fix: vendored reflect2 v1.0.1 crashes under Go >= 1.18 on the first custom-resource
  # write (reflect2.(*UnsafeMapType).UnsafeIterate); use Debian's fixed copy instead.
  log "replacing vendor/github.com/modern-go/reflect2 with Debian's copy"
  r2="$SRC/vendor/github.com/modern-go/reflect2"
  rm -rf "$r2"
  mkdir -p "$r2"
  find /usr/share/gocode/src/github.com/modern-go/reflect2/ -maxdepth 1 \
    \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' -exec cp {} "$r2/" \;

  # The build expects the tree at $GOPATH/src/k8s.io/kubernetes.
  mkdir -p "$SRC/.go/src/k8s.io"
  ln -sfn ../../.. "$SRC/.go/src/k8s.io/kubernetes"
  touch "$SRC/.sluice-source-ok"
fi

# --- build ----------------------------------------------------------------------------------
# Plain `go build` fails on this tree; `make` (which needs rsync) works. A failed make leaves a
# broken _output, so always start from a clean one.
log "building kube-apiserver $KUBE_VERSION (cold: ~400 s, ~1.3 GB RAM)"
cd "$SRC"
rm -rf _output
if ! GOPATH="$SRC/.go" GOPROXY=off GOFLAGS= CGO_ENABLED=0 make WHAT=cmd/kube-apiserver >&2; then
  rm -rf _output
  log "error: build failed (see output above); rerun this script to retry"
  exit 1
fi

# Install atomically: a half-copied binary never appears at $BIN.
mkdir -p "$CACHE/bin"
cp _output/bin/kube-apiserver "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
# The intermediate build output is ~1 GB and no longer needed.
rm -rf _output
log "built $("$BIN" --version)"
echo "$BIN"
