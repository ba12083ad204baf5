# syntax=docker/dockerfile:1
# vantage-agent image. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t vantage-agent .
# Runs as the unprivileged user `vantage` (uid 10001); node credential and
# last route table in /var/lib/vantage-agent.

# --- build -----------------------------------------------------------------------
# Any current stable toolchain (the workspace needs edition 2024).
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p vantage-agent --bin vantage-agent \
 && install -D -m 0755 target/release/vantage-agent /out/vantage-agent

# --- runtime ---------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 vantage \
 && useradd --system --uid 10001 --gid vantage --home-dir /var/lib/vantage-agent --shell /usr/sbin/nologin vantage \
 && install -d -o vantage -g vantage -m 0750 /var/lib/vantage-agent /etc/vantage
COPY --from=builder /out/vantage-agent /usr/local/bin/vantage-agent
USER 10001:10001
WORKDIR /var/lib/vantage-agent
VOLUME ["/var/lib/vantage-agent"]
# 8080 HTTP-FLV media, 1935 RTMP publish/play, 8081 admin (/metrics, /healthz, /readyz,
# /v1/status, /v1/routes), 7402/udp probes.
EXPOSE 8080/tcp 1935/tcp 8081/tcp 7402/udp
ENV RUST_LOG=info
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8081 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# SIGTERM (docker stop) drains: give `docker stop -t` more than drain_grace_s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/vantage-agent"]
# The admin port listens on all interfaces inside the container so
# Prometheus can scrape it; publish it only on trusted networks.
CMD ["--data-dir", "/var/lib/vantage-agent", "--admin-listen", "0.0.0.0:8081"]
