# One image with every spot-scheduler binary; docker-compose.yml picks the service by command.
# The base images can come from a mirror: --build-arg RUST_IMAGE=... BASE_IMAGE=... (both bookworm).
ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The services and the agent only (scripts/up's build less spotctl): no test, bench or chaos tools.
RUN cargo build --release -p spot-api -p spot-provisioner -p spot-reaper -p spot-agent \
    && mkdir /out \
    && cp target/release/spot-api target/release/spot-provisioner target/release/spot-reaper \
          target/release/spot-agent /out/

FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
ENV SPOT__LOG__FORMAT=json
