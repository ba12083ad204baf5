# syntax=docker/dockerfile:1
# vantage-scheduler image. Build from the repository root:
#   docker build -f deploy/docker/scheduler.Dockerfile -t vantage-scheduler .
# Runs as the unprivileged user `vantage` (uid 10001); state in /var/lib/vantage.

# --- build -----------------------------------------------------------------------
# Any current stable toolchain (the workspace needs edition 2024).
FROM rust:1-bookworm AS builder
WORKDIR /src
# No system protoc needed: protobuf code is generated with protox (pure Rust).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p vantage-scheduler --bin vantage-scheduler \
 && install -D -m 0755 target/release/vantage-scheduler /out/vantage-scheduler

# --- runtime ---------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 vantage \
 && useradd --system --uid 10001 --gid vantage --home-dir /var/lib/vantage --shell /usr/sbin/nologin vantage \
 && install -d -o vantage -g vantage -m 0750 /var/lib/vantage /etc/vantage
COPY --from=builder /out/vantage-scheduler /usr/local/bin/vantage-scheduler
USER 10001:10001
WORKDIR /var/lib/vantage
VOLUME ["/var/lib/vantage"]
# 7400/udp QUIC telemetry, 7401 gRPC routes, 7480 HTTP API + dashboard + /metrics.
EXPOSE 7400/udp 7401/tcp 7480/tcp
ENV RUST_LOG=info
# /readyz without curl: bash's /dev/tcp.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/7480 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# SIGTERM (docker stop) flushes the store and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/vantage-scheduler"]
CMD ["--data-dir", "/var/lib/vantage"]
