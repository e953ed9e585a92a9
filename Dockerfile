# syntax=docker/dockerfile:1
# kvsync-node: the REST API and the embedded web UI in one small image.
#
#   docker build -t kvsync-node .
#   docker run -e KVSYNC_NODE_ID=node1 -e KVSYNC_MONGODB_URI=mongodb://... \
#              -e KVSYNC_KAFKA_BROKERS=kafka:9092 -p 3003:3003 kvsync-node
#
# Every flag of `kvsync-node --help` has a KVSYNC_* environment variable; the README's
# Configuration table lists them. The most common ones are set below with their defaults.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# librdkafka is built from source by rdkafka-sys: it needs a C toolchain (in the image),
# cmake, and the headers of the TLS and compression libraries it links against.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The build caches survive between builds (BuildKit); the binary is copied out of them.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kvsync-node \
 && install -D target/release/kvsync-node /out/kvsync-node

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin kvsync
COPY --from=build /out/kvsync-node /usr/local/bin/kvsync-node
USER kvsync
ENV KVSYNC_HTTP_ADDR=0.0.0.0:3003 \
    KVSYNC_MONGODB_URI=mongodb://mongo:27017 \
    KVSYNC_MONGODB_DB=kvsync \
    KVSYNC_KAFKA_BROKERS=kafka:9092 \
    KVSYNC_KAFKA_TOPIC=kvsync.pairs \
    KVSYNC_LOG_FORMAT=json
EXPOSE 3003
# The binary probes its own /healthz, so the image needs no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["kvsync-node", "--health-check"]
ENTRYPOINT ["kvsync-node"]
