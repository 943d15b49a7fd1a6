# syntax=docker/dockerfile:1
# One image for every quotehelper role on Kubernetes: `serve` (quote service), `device-plugin`,
# `webhook`, `webhook-tls` (the webhook's init step) and `health` (the probes).
#
#   docker build -t quotehelper:0.1.0 .                          # software SGX platform (simulate overlay)
#   docker build --build-arg SGX_DCAP=1 -t quotehelper:0.1.0 .   # + Intel's DCAP quoting library (SGX nodes)
#
# The SGX_DCAP=1 variant installs libsgx-dcap-ql from Intel's apt repository (INTEL_SGX_REPO), which this
# project's CI cannot reach: that branch is written from Intel's published instructions, not tested here.

FROM python:3.11-slim-bookworm AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ARG SGX_DCAP=0
ARG INTEL_SGX_REPO=https://download.01.org/intel-sgx/sgx_repo/ubuntu
ARG INTEL_SGX_SUITE=jammy
RUN if [ "$SGX_DCAP" = "1" ]; then \
      set -eux; \
      apt-get update; \
      apt-get install -y --no-install-recommends ca-certificates curl gnupg; \
      curl -fsSL "$INTEL_SGX_REPO/intel-sgx-deb.key" | gpg --dearmor -o /usr/share/keyrings/intel-sgx.gpg; \
      echo "deb [signed-by=/usr/share/keyrings/intel-sgx.gpg] $INTEL_SGX_REPO $INTEL_SGX_SUITE main" \
        > /etc/apt/sources.list.d/intel-sgx.list; \
      apt-get update; \
      apt-get install -y --no-install-recommends libsgx-dcap-ql libsgx-dcap-default-qpl; \
      apt-get purge -y curl gnupg; apt-get autoremove -y; rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
# Read-only root file systems in every manifest: nothing may need to write outside mounted volumes.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["quotehelper"]
CMD ["--help"]
