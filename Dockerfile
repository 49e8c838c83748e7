# offboarder: the worker and the tenant simulator in one small image.
#   docker build -t offboarder .
#   docker run --rm offboarder --help

# librdkafka, OpenSSL, zlib and zstd are built from source into the binary: the build
# needs gcc, g++, make and perl, which the rust image has.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY schemas ./schemas
COPY examples ./examples
COPY offboarder.example.toml ./
RUN cargo build --release --locked --bin offboarder

# The binary links only the C runtime. ca-certificates holds the public CAs that TLS to the
# brokers and to Netskope verifies against.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home offboarder
COPY --from=build /src/target/release/offboarder /usr/local/bin/offboarder
COPY offboarder.example.toml /etc/offboarder/offboarder.toml
COPY schemas /usr/share/offboarder/schemas
COPY examples /usr/share/offboarder/examples
USER offboarder
ENTRYPOINT ["/usr/local/bin/offboarder"]
CMD ["run", "--config", "/etc/offboarder/offboarder.toml"]
