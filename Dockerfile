# syntax=docker/dockerfile:1
# Multi-stage build: compile with cmake (Pingora's zlib-ng needs it), run as non-root.
# Base images are pinned to a release (bump them on purpose, not by a rebuild); BuildKit
# cache mounts keep the crate registry and the build directory between builds, so a change
# to Portico's code recompiles Portico alone.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:12.12-slim

FROM ${RUST_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first: this layer is reused until Cargo.toml, Cargo.lock or vendor/ changes.
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
RUN --mount=type=cache,target=/usr/local/cargo/registry cargo fetch --locked
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin portico \
    && cp target/release/portico /usr/local/bin/portico && strip /usr/local/bin/portico

FROM ${RUNTIME_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin portico
COPY --from=build /usr/local/bin/portico /usr/local/bin/portico
COPY deploy/gateway.yaml /etc/portico/gateway.yaml
COPY schemas /etc/portico/schemas
ENV PORTICO_CONFIG=/etc/portico/gateway.yaml
USER 10001
EXPOSE 8080 9901
# Reads the admin address from the container's config (PORTICO_CONFIG), so a container run
# with another config and admin port is checked on its own.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s CMD ["portico", "health"]
ENTRYPOINT ["portico"]
CMD ["run"]
