#!/usr/bin/env bash
# `make image-test`: run the built image as the manifests run it (read-only root file system, no
# capabilities, no new privileges, no network) and check, inside it: the non-root default user, the
# read-only root, `sim init` and `serve` as root with no capabilities (the simulate overlay's device
# plugin and quote service), `health` (the probes), a `quote` from a second container through the socket
# (the sample Job), `sim export` + `verify` as the image's own user; a clean SIGTERM stop; the image's
# size. Needs podman and runc (Debian).
#
#   tests/image/image_test.sh [IMAGE]        env: MAX_IMAGE_MB (default 300), QH_RUNTIME (default runc)
set -euo pipefail
IMAGE=${1:-localhost/quotehelper:0.1.0}
MAX_IMAGE_MB=${MAX_IMAGE_MB:-300}
RUNTIME=${QH_RUNTIME:-runc}
t_start=$SECONDS
fails=0 passes=0
pass() { echo "ok    $*"; passes=$((passes + 1)); }
fail() { echo "FAIL  $*"; fails=$((fails + 1)); }

command -v podman >/dev/null || { echo "image-test: podman not found (Debian: apt-get install podman runc)" >&2; exit 1; }
podman image exists "$IMAGE" || { echo "image-test: no image $IMAGE (run make image first)" >&2; exit 1; }

work=$(mktemp -d)
serve_name=qh-image-test-$$
cleanup() { podman rm -f -t 0 "$serve_name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
# Root's, as /var/lib/quotehelper and /var/run/aesmd are on a node; user/ is the image's user's own.
chmod 755 "$work" && mkdir "$work/user" && chown 65532:65532 "$work/user"

# rlimits at or below this machine's (podman's defaults exceed what this VM allows); otherwise as a pod.
run_opts=(--runtime "$RUNTIME" --network none --read-only --read-only-tmpfs=false --cap-drop all
          --security-opt no-new-privileges --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 -v "$work:/data")
qh() { podman run --rm "${run_opts[@]}" "$IMAGE" "$@"; }           # the image's user (the webhook's way)
qh_root() { podman run --rm "${run_opts[@]}" --user 0:0 "$IMAGE" "$@"; }  # runAsUser: 0, no capabilities
sh_in() { podman run --rm "${run_opts[@]}" --entrypoint /bin/sh "$IMAGE" -c "$1"; }

# Size.
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
mb=$((size / 1000000))
if [ "$mb" -le "$MAX_IMAGE_MB" ]; then pass "image size $mb MB (limit $MAX_IMAGE_MB MB)"; else fail "image size $mb MB > $MAX_IMAGE_MB MB"; fi

# The non-root user, by default.
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
ids=$(sh_in 'id -u; id -g' | tr '\n' ' ') || true
if [ "$user" = "65532:65532" ] && [ "$ids" = "65532 65532 " ]; then pass "runs as $user (id: $ids)"; else fail "user: config '$user', id '$ids'"; fi

# The read-only root file system: nothing under / is writable, the mounted volume is.
out=$(sh_in 'for d in / /opt/quotehelper /tmp /var/tmp /home; do touch $d/.w 2>/dev/null && echo "writable $d"; done; touch /data/user/.w && echo data-ok' 2>&1) || true
if [ "$out" = "data-ok" ]; then pass "read-only root file system (only the volume is writable)"; else fail "read-only root: $out"; fi

# sim init, as the device plugin creates the platform (root, no /tmp: it writes only to the platform).
if out=$(qh_root sim init --platform /data/platform 2>&1) && [ -n "$(ls -A "$work/platform" 2>/dev/null)" ]; then
  pass "sim init"
else
  fail "sim init: $out"
fi

# serve, as the DaemonSet runs it: root with no capabilities, its own memory /tmp, SIGTERM to stop.
podman run -d --name "$serve_name" "${run_opts[@]}" --user 0:0 --tmpfs /tmp:size=16m "$IMAGE" \
  serve --platform /data/platform --socket /data/run/aesm.socket --workers 2 >/dev/null || fail "serve: did not start"
for _ in $(seq 1 120); do
  [ -S "$work/run/aesm.socket" ] && break
  [ "$(podman inspect --format '{{.State.Running}}' "$serve_name" 2>/dev/null)" = true ] || break
  sleep 0.5
done
socket_up=0
if [ -S "$work/run/aesm.socket" ]; then socket_up=1; pass "serve: socket up"; else fail "serve: no socket; log: $(podman logs "$serve_name" 2>&1 | tail -5)"; fi

# health, from another container (the probes' command, as the quote service's container runs it).
if out=$(qh_root health --socket /data/run/aesm.socket --platform /data/platform 2>&1); then pass "health: $(echo "$out" | tail -1)"; else fail "health: $out"; fi

# A quote from another container, through the socket: the sample Job (root for the simulated enclave's
# CPU secret, root's 0600 on the node; no capabilities).
out=$(qh_root quote --platform /data/platform --socket /data/run/aesm.socket --report-data 00ff -o /data/quote.bin 2>&1) || true
if echo "$out" | grep -q "out-of-process" && [ -s "$work/quote.bin" ]; then pass "quote through the socket: $out"; else fail "quote: $out"; fi

# verify it against the platform's test root and fresh collateral (a verifier needs no root).
qh_root sim export --platform /data/platform --out /data/trust >/dev/null 2>&1 || true
chmod -R a+rX "$work/trust" 2>/dev/null || true  # handed to the verifier, as a ConfigMap would be (export writes 0700)
out=$(qh verify /data/quote.bin --collateral /data/trust/collateral.json --root-ca /data/trust/root_ca.pem 2>&1) || true
if echo "$out" | head -1 | grep -q "OK UpToDate"; then pass "verify: $(echo "$out" | head -1)"; else fail "verify: $out"; fi

# SIGTERM: drains, exits 0, removes its socket.
podman stop -t 20 "$serve_name" >/dev/null 2>&1 || true
code=$(podman inspect --format '{{.State.ExitCode}}' "$serve_name" 2>/dev/null) || code=none
if [ "$socket_up" = 1 ] && [ "$code" = 0 ] && [ ! -e "$work/run/aesm.socket" ]; then pass "serve: SIGTERM -> exit 0, socket removed"
else fail "serve: exit $code, socket $(ls "$work/run" 2>&1); log: $(podman logs "$serve_name" 2>&1 | tail -5)"; fi

echo "image-test: $IMAGE, $((SECONDS - t_start)) s"
echo "image-test: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
