#!/bin/sh
# Simulation only: puts the node's simulated SGX root CA and fresh collateral (valid 30 days) into the
# ConfigMap attested-tls-trust, read by both sample pods. On SGX nodes Intel's root is built in and
# collateral comes from PCS/PCCS instead. Needs kubectl access to the quotehelper namespace.
set -eu
NS=${NS:-default}
POD=$(kubectl -n quotehelper get pod -l app.kubernetes.io/name=quote-helper -o jsonpath='{.items[0].metadata.name}')
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
kubectl -n quotehelper exec "$POD" -- cat /var/lib/quotehelper/pki/root_ca.pem > "$DIR/root_ca.pem"
kubectl -n quotehelper exec "$POD" -- /opt/quotehelper/bin/python -c \
  'from quotehelper.platform.sim import SimPlatform; print(SimPlatform.open("/var/lib/quotehelper/platform").collateral().to_dcap_qvl_json())' \
  > "$DIR/collateral.json"
kubectl -n "$NS" create configmap attested-tls-trust --from-file="$DIR/root_ca.pem" \
  --from-file="$DIR/collateral.json" --dry-run=client -o yaml | kubectl apply -f -
