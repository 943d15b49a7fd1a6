# syntax=docker/dockerfile:1
# One image for every quotehelper role on Kubernetes: `serve` (quote service), `device-plugin`,
# `webhook`, `webhook-tls` (the webhook's init step) and `health` (the probes).
#
#   docker build -t quotehelper:0.1.0 .                          # software SGX platform (simulate overlay)
#   docker build --build-arg SGX_DCAP=1 -t quotehelper:0.1.0 .   # + Intel's DCAP quoting library (SGX nodes)
#   make image [SGX_DCAP=1]       # the same with buildah, no Docker daemon (base made from Debian packages)
#
# Base: Debian bookworm (slim) and Debian's python3, nothing else from outside Debian but the Python
# wheels from PyPI. `make image` builds the base itself with mmdebstrap, so this Dockerfile builds
# unchanged with Docker (Docker Hub's debian:bookworm-slim) and with buildah on a machine without either.
#
# SGX_DCAP=1 installs libsgx-dcap-ql from Intel's apt repository (INTEL_SGX_REPO): never built by this
# project's CI, which cannot reach it; the build stops with a clear error when the packages cannot be
# installed, rather than producing an image without them.
#
# A TLS-intercepting proxy's CA, if any, can be passed as a build secret (never stored in the image):
#   docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt ...
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS venv
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The application and its dependencies in one venv under /opt/quotehelper (copied whole to the final stage),
# byte-compiled here: the containers' root file systems are read-only.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv /opt/quotehelper \
 && /opt/quotehelper/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/quotehelper/bin/pip uninstall -y pip setuptools \
 && /opt/quotehelper/bin/quotehelper --version

FROM ${BASE}
ARG SGX_DCAP=0
ARG INTEL_SGX_REPO=https://download.01.org/intel-sgx/sgx_repo/ubuntu
ARG INTEL_SGX_SUITE=jammy
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log
RUN --mount=type=secret,id=ca \
    if [ "$SGX_DCAP" = "1" ]; then \
      set -eux; \
      fail() { echo "SGX_DCAP=1: $1 from $INTEL_SGX_REPO ($INTEL_SGX_SUITE). The DCAP image needs Intel's" \
                    "apt repository; build without SGX_DCAP for the software platform." >&2; exit 1; }; \
      export DEBIAN_FRONTEND=noninteractive; \
      if [ -s /run/secrets/ca ]; then cp /run/secrets/ca /tmp/ca.crt; set -- --cacert /tmp/ca.crt; else set --; fi; \
      apt-get update; \
      apt-get install -y --no-install-recommends ca-certificates curl gnupg; \
      curl -fsSL --retry 2 --max-time 60 "$@" "$INTEL_SGX_REPO/intel-sgx-deb.key" -o /tmp/intel-sgx.key \
        || fail "cannot download the repository key"; \
      gpg --dearmor -o /usr/share/keyrings/intel-sgx.gpg /tmp/intel-sgx.key || fail "the repository key is not a key"; \
      echo "deb [signed-by=/usr/share/keyrings/intel-sgx.gpg] $INTEL_SGX_REPO $INTEL_SGX_SUITE main" \
        > /etc/apt/sources.list.d/intel-sgx.list; \
      if [ -s /tmp/ca.crt ]; then echo "Acquire::https::CaInfo \"/tmp/ca.crt\";" > /etc/apt/apt.conf.d/99ca; fi; \
      apt-get update || fail "cannot read the repository"; \
      apt-get install -y --no-install-recommends libsgx-dcap-ql libsgx-dcap-default-qpl \
        || fail "cannot install libsgx-dcap-ql and libsgx-dcap-default-qpl"; \
      ldconfig -p | grep -q libsgx_dcap_ql.so || fail "libsgx_dcap_ql.so is not in the image"; \
      rm -f /etc/apt/apt.conf.d/99ca /tmp/ca.crt /tmp/intel-sgx.key; \
      apt-get purge -y curl gnupg; apt-get autoremove -y; apt-get clean; rm -rf /var/lib/apt/lists/*; \
    fi
# A user of its own; the node-level roles (quote service, device plugin) run as root by their manifests'
# runAsUser: 0, with no capabilities. Read-only root file systems everywhere: nothing may need to write
# outside mounted volumes.
RUN groupadd --system --gid 65532 quotehelper \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin quotehelper
COPY --from=venv /opt/quotehelper /opt/quotehelper
ENV PATH=/opt/quotehelper/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["quotehelper"]
CMD ["--help"]
