# mandate as one static binary on a distroless image, run as a non-root user (docs/deploy.md).
#   docker build -t mandate .
#   docker run -d -p 8420:8420 -v mandate-data:/data -e MANDATE_ISSUER=https://auth.example.com mandate
# The build line below is also run by the test suite (internal/cli/deploy_test.go), which checks
# that the binary it makes is static.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w -X github.com/mandate-dev/mandate/internal/buildinfo.version=${VERSION}" -o /out/mandate ./cmd/mandate
RUN mkdir -p /out/data

# distroless/static: CA certificates, /etc/passwd with nonroot (65532), no shell, no libc.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/mandate /usr/local/bin/mandate
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
ENV MANDATE_DATA_DIR=/data \
    MANDATE_LISTEN=0.0.0.0:8420
VOLUME ["/data"]
EXPOSE 8420
# No HEALTHCHECK: the image has no shell or curl. Probe GET /healthz (alive) and GET /readyz
# (the database answers) from the orchestrator, as docs/deploy.md shows.
ENTRYPOINT ["/usr/local/bin/mandate"]
CMD ["serve"]
