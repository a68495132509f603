# One image with every spot-scheduler binary; docker-compose.yml picks the service by command.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins \
    && mkdir /out \
    && cp target/release/spot-api target/release/spot-provisioner target/release/spot-reaper \
          target/release/spot-agent /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
ENV SPOT__LOG__FORMAT=json
