# syntax=docker/dockerfile:1
# The ztunnel image. Build from the repository root:
#   docker build -f docker/ztunnel.Dockerfile -t <registry>/ztunnel:<tag> .
# (docker/README.md). Two stages: the workspace built with the Rust
# toolchain, then only the binary on a small runtime image.

# The workspace's rust-version (Cargo.toml).
ARG RUST_VERSION=1.88

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds; the binary is
# copied out of them (a cache mount is not part of the layer). Debug info
# is stripped (the release profile keeps it for profiling); symbols stay
# for backtraces.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=ambient-mesh-target \
    cargo build --release --locked -p ztunnel --bin ztunnel \
  && install -D target/release/ztunnel /out/ztunnel \
  && strip --strip-debug /out/ztunnel

# ztunnel runs `nft` and `ip` (nftables, iproute2) to install the node's
# capture, as root in the node's network namespace with NET_ADMIN and NET_RAW
# (the chart drops every other capability): a slim Debian, not distroless.
FROM debian:bookworm-slim
# Debian's current nftables and iproute2 of bookworm (security updates
# included), not pinned versions that the archive drops.
# hadolint ignore=DL3008
RUN apt-get update \
  && apt-get install -y --no-install-recommends nftables iproute2 \
  && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ztunnel /usr/local/bin/ztunnel
# Root, as the chart runs it: the capabilities reach `nft` and `ip` only
# through root's permitted set (a non-root user would need ambient
# capabilities on each exec).
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["/usr/local/bin/ztunnel"]
