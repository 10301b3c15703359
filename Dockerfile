# syntax=docker/dockerfile:1

# ---- build ----------------------------------------------------------------
FROM rust:1-bookworm AS builder

# rdkafka builds a bundled librdkafka (and zstd/zlib, and OpenSSL for Kafka
# over TLS: `ssl-vendored`, which needs perl, part of this image) from source;
# it links the system libcurl (OAuth/OIDC token requests: `curl` feature).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake build-essential pkg-config zlib1g-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# Cache mounts keep the crate registry and compiled dependencies between builds;
# the binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin outboxd \
 && install -m 0755 target/release/outboxd /usr/local/bin/outboxd

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g libcurl4 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 outboxd \
 && useradd --system --uid 10001 --gid outboxd --home-dir /data --shell /usr/sbin/nologin outboxd \
 && mkdir -p /data /etc/outboxd \
 && chown outboxd:outboxd /data

COPY --from=builder /usr/local/bin/outboxd /usr/local/bin/outboxd

USER outboxd:outboxd
WORKDIR /data
VOLUME ["/data"]

# 8080: command API, 9090: admin server (/metrics, /health).
EXPOSE 8080 9090

ENTRYPOINT ["/usr/local/bin/outboxd"]
CMD ["run"]
