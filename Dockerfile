# syntax=docker/dockerfile:1
#
# kopia-maintd container image.
#
#   docker build --build-arg VERSION=v0.1.0 -t kopia-maintd .
#   docker run --read-only -v kopia-maintd:/var/lib/kopia-maintd \
#     -v $PWD/config.yaml:/etc/kopia-maintd/config.yaml:ro -p 9810:9810 kopia-maintd
#
# The image runs as the distroless "nonroot" user (65532) and works with a
# read-only root filesystem: everything the daemon writes goes under
# /var/lib/kopia-maintd (state, kopia caches and TMPDIR), which should be a
# volume. Kopia's snapshot GC spills large memory-mapped temporary files to
# TMPDIR during full maintenance, so TMPDIR must be on disk, not tmpfs.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
# Dependencies first, so source changes reuse the module download layer.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/kopia-maintd ./cmd/kopia-maintd
# The state directory with its tmp and cache subdirectories, owned by the
# runtime user. A Docker named volume is seeded from them on first use; a
# Kubernetes volume or a bind mount starts empty (see TMPDIR below).
RUN mkdir -p /out/var/lib/kopia-maintd/tmp /out/var/lib/kopia-maintd/cache /out/var/lib/kopia-maintd/config

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="kopia-maintd" \
      org.opencontainers.image.description="Daemon that runs Kopia repository maintenance" \
      org.opencontainers.image.version="${VERSION}"
# distroless/static already carries CA certificates, /etc/passwd with
# nonroot (65532) and tzdata (for CRON_TZ= schedules).
COPY --from=build /out/kopia-maintd /kopia-maintd
COPY --from=build --chown=65532:65532 --chmod=0700 /out/var/lib/kopia-maintd /var/lib/kopia-maintd
# With a read-only root filesystem the only writable places are volumes.
# TMPDIR and the XDG directories (which kopia uses for caches and config when
# not told otherwise) point into the state volume. When that volume starts
# empty (Kubernetes PVC/emptyDir, bind mount) these subdirectories do not
# exist: the daemon creates them at start-up, or the pod sets TMPDIR=/tmp
# with an emptyDir mounted at /tmp (as deploy/base does).
ENV TMPDIR=/var/lib/kopia-maintd/tmp \
    XDG_CACHE_HOME=/var/lib/kopia-maintd/cache \
    XDG_CONFIG_HOME=/var/lib/kopia-maintd/config \
    KOPIA_CHECK_FOR_UPDATES=false
USER 65532:65532
VOLUME /var/lib/kopia-maintd
EXPOSE 9810
ENTRYPOINT ["/kopia-maintd"]
CMD ["run", "--config", "/etc/kopia-maintd/config.yaml"]
