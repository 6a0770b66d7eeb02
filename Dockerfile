# Multi-stage build: compile with cmake (Pingora's zlib-ng needs it), run as non-root.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin portico && strip target/release/portico

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin portico
COPY --from=build /src/target/release/portico /usr/local/bin/portico
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
