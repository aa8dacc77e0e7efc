#!/bin/bash
# Run an rfm image as operators do and print what each step saw: the README's `docker run`, the k8s.yaml pod
# (read-only root, uid 10001, keys, audit log), a mounted checkpoint, DEPLOYMENT.md's derived image, and --record
# into volumes of the wrong and the right owner. Needs a Docker daemon and this checkout's .venv (make install).
#   tools/check_image.sh [IMAGE]          # IMAGE: rfm-serve (docker build -t rfm-serve .)
set -u
IMAGE=${1:-rfm-serve}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
WORK=$(mktemp -d)
trap 'docker rm -f rfmA rfmB rfmC rfmD rfmE >/dev/null 2>&1; rm -rf "$WORK"' EXIT
wait_ready() {  # port, seconds
  for i in $(seq 1 $2); do
    r=$(curl -s -o /dev/null -w '%{http_code}' localhost:$1/readyz); [ "$r" = 200 ] && { echo "ready after ${i}s"; return 0; }; sleep 1
  done; echo "NOT READY: $(curl -s localhost:$1/readyz)"; return 1
}
act() {  # port [api key]: one chunk over HTTP, one over the SDK's WebSocket, one over openpi at / (host, port)
  $PY - "$@" <<'PY'
import sys, numpy as np
from rfm.client import RFMClient
port = sys.argv[1]; key = sys.argv[2] if len(sys.argv) > 2 else None
url = f"http://127.0.0.1:{port}"
with RFMClient(url, api_key=key) as c:
    m = c.models()
itf = m.get("interface", m)
h, w = itf["image_size"]
obs = {"images": {cam: np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8) for cam in itf["cameras"]},
       "state": np.zeros(len(itf["state_names"]), np.float32), "instruction": "open the drawer"}
for t in ("http", "ws"):
    with RFMClient(url, transport=t, api_key=key) as c:
        print(t, "chunk", c.act(obs).shape)
from openpi_client import websocket_client_policy
pol = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", int(port), api_key=key)
o = {"observation/image": obs["images"][itf["cameras"][0]], "observation/wrist_image": obs["images"][itf["cameras"][-1]],
     "observation/state": obs["state"], "prompt": "open the drawer"}
print("openpi at / chunk", pol.infer(o)["actions"].shape)
PY
}
echo "== 1. default image, default command (README: docker run -p 8000:8000 rfm-serve)"
docker run -d --name rfmA -p 18001:8000 "$IMAGE" >/dev/null
wait_ready 18001 90; docker logs rfmA 2>&1 | grep -v "INFO:  " | grep -v "^{" | tail -3
act 18001
echo "   health after 20 s: $(sleep 20; docker inspect -f '{{.State.Health.Status}}' rfmA)"
s=$(date +%s.%N); docker stop rfmA >/dev/null; e=$(date +%s.%N)
echo "   docker stop: $(echo "$e - $s" | bc | cut -c1-4) s, exit code $(docker inspect -f '{{.State.ExitCode}}' rfmA)"
docker rm -f rfmA >/dev/null
echo "== 2. as k8s.yaml runs it: read-only root, /tmp and /var/log/rfm emptyDirs, uid 10001, keys, audit log"
mkdir -p "$WORK/keys" && echo "k8s-test-key-0123456789" > "$WORK/keys"/keys.txt && chmod 644 "$WORK/keys"/keys.txt
docker run -d --name rfmB --read-only --tmpfs /tmp --tmpfs /var/log/rfm:mode=1777 --user 10001 -p 18002:8000 \
  -v "$WORK/keys":/etc/rfm:ro "$IMAGE" --max-batch 32 --max-wait-ms 2 --queue-size 256 --timeout-ms 2000 \
  --threads 2 --audit-log /var/log/rfm/audit.jsonl --api-key-file /etc/rfm/keys.txt >/dev/null
wait_ready 18002 90; act 18002 k8s-test-key-0123456789
echo "   without a key: $(curl -s -o /dev/null -w '%{http_code}' -X POST localhost:18002/v1/act)"
echo "   audit lines: $(docker exec rfmB wc -l /var/log/rfm/audit.jsonl)"
docker logs rfmB 2>&1 | grep -i "warn\|error" | head -5; docker rm -f rfmB >/dev/null
echo "== 3. a checkpoint of one's own, mounted (exports at start)"
docker run -d --name rfmC -p 18003:8000 -v "$ROOT/checkpoints/base":/models/m:ro -e RFM_CHECKPOINT=/models/m "$IMAGE" >/dev/null
wait_ready 18003 240; act 18003
for i in $(seq 1 90); do docker logs rfmC 2>&1 | grep -q "now serving on onnx\|ready on onnx\|switched" && break; sleep 2; done
docker logs rfmC 2>&1 | grep -v "INFO:  " | tail -3 | cut -c1-250; docker rm -f rfmC >/dev/null
echo "== 4. the DEPLOYMENT recipe: an image FROM rfm-serve with its own checkpoint's engine"
mkdir -p "$WORK/own" && cp -r "$ROOT/checkpoints/base" "$WORK/own/my_ckpt"
sed -n '/^FROM rfm-serve/,/^ENV RFM_CHECKPOINT/p' "$ROOT/docs/DEPLOYMENT.md" | sed "s|^FROM rfm-serve|FROM $IMAGE|" > "$WORK/own/Dockerfile"
docker build -q -t rfm-own "$WORK/own" >/dev/null && echo "   built"
docker run -d --name rfmE -p 18005:8000 rfm-own >/dev/null; wait_ready 18005 90
docker logs rfmE 2>&1 | grep -i "ready on\|warn\|error" | cut -c1-200; docker rm -f rfmE >/dev/null
echo "== 5. recording into a volume owned by root, then into one owned by uid 10001"
mkdir -p "$WORK/recvol" && chmod 755 "$WORK/recvol"
timeout 60 docker run --rm -v "$WORK/recvol":/data "$IMAGE" --record /data/rec; echo "   exit code $?"
chown 10001 "$WORK/recvol"
docker run -d --name rfmD -p 18004:8000 -v "$WORK/recvol":/data "$IMAGE" --record /data/rec >/dev/null
wait_ready 18004 90; act 18004 >/dev/null; sleep 1; docker stop rfmD >/dev/null
$PY -m rfm.cli.main data info "$WORK/recvol"/rec 2>&1 | head -4; docker rm -f rfmD >/dev/null
