# syntax=docker/dockerfile:1
# The `sluice` image: one binary that is the coordinator, the worker and the CLI
# (`sluice coordinator`, `sluice worker --pool P`, `sluice submit …`).
#
#   docker build -t sluice:0.1.0 .
#
# Rules this file keeps (cli/tests/image.rs checks them by parsing it):
# - multi-stage: the Rust toolchain never reaches the runtime image;
# - every base image pinned by digest (a tag alone can change under us); bump both digests
#   deliberately, e.g. `docker buildx imagetools inspect rust:1.95-slim-bookworm`;
# - the builder and the runtime share a Debian release (bookworm), so the binary's glibc matches;
# - `cargo build --locked`: exactly the versions in Cargo.lock;
# - the runtime runs as an unprivileged numeric user (10001), which Kubernetes'
#   `runAsNonRoot` can verify; the binary needs no writable path, no HOME and no root
#   (cli/tests/image.rs runs it that way).
#
# A worker image for a team's own jobs starts FROM this image; docs/operations.md ("A worker
# image for your jobs") shows it for Python and for a Rust worker binary.

ARG RUST_IMAGE=rust:1.95-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082
ARG RUNTIME_IMAGE=debian:bookworm-slim@sha256:7b140f374b289a7c2befc338f42ebe6441b7ea838a042bbd5acbfca6ec875818

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# No debug info in the image's binary (the release profile keeps it for profiling at home).
RUN CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --locked --release -p sluice \
 && install -m 0755 target/release/sluice /sluice

FROM ${RUNTIME_IMAGE} AS runtime
# CA certificates: TLS to NATS and to the Kubernetes API.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 sluice \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sluice
COPY --from=build /sluice /usr/local/bin/sluice
USER 10001:10001
WORKDIR /
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["--help"]
