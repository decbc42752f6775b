# syntax=docker/dockerfile:1
# The waypoint image. Build from the repository root:
#   docker build -f docker/waypoint.Dockerfile -t <registry>/waypoint:<tag> .
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
    cargo build --release --locked -p waypoint --bin waypoint \
  && install -D target/release/waypoint /out/waypoint \
  && strip --strip-debug /out/waypoint

# glibc and libgcc only; no shell. Non-root (uid 65532): the waypoint binds
# only unprivileged ports (15008 HBONE, 15020 metrics, 15021 readiness) and
# needs no capability.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/waypoint /usr/local/bin/waypoint
USER 65532:65532
EXPOSE 15008 15020 15021
ENTRYPOINT ["/usr/local/bin/waypoint"]
