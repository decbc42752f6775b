# syntax=docker/dockerfile:1
# The control-plane image. Build from the repository root:
#   docker build -f docker/control-plane.Dockerfile -t <registry>/control-plane:<tag> .
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
    cargo build --release --locked -p control-plane --bin control-plane \
  && install -D target/release/control-plane /out/control-plane \
  && strip --strip-debug /out/control-plane

# glibc and libgcc only; no shell. Non-root (uid 65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/control-plane /usr/local/bin/control-plane
USER 65532:65532
EXPOSE 15012 15014
ENTRYPOINT ["/usr/local/bin/control-plane"]
