#!/usr/bin/env bash
# First look at a GPU (`make gpu-check`): the CUDA tests, `chorus serve` on the GPU (/readyz reports the device and
# dtype, one transcription of a demo sample), then the backbone, mixed-batch and served-path benchmarks on it.
# A few minutes on one GPU. Results (logs and JSON) go to $GPU_CHECK_OUT (default build/gpu-check); the numbers
# belong in docs/benchmarks.md ("GPU").
#
#   tools/gpu-check.sh                     # the first CUDA device, bf16 (the GPU serving precision)
#   CHORUS_DEVICE=cuda:1 tools/gpu-check.sh
#   PYTHON=/path/to/python tools/gpu-check.sh   # default: .venv/bin/python, else python3
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT_DIR=${GPU_CHECK_OUT:-build/gpu-check}
DEVICE=${CHORUS_DEVICE:-cuda}
PORT=${GPU_CHECK_PORT:-8765}
mkdir -p "$OUT_DIR"
failed=()

step() { printf '\n== %s\n' "$1"; }

step "device"
"$PY" - "$DEVICE" <<'EOF' | tee "$OUT_DIR/device.txt" || exit 1
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu-check: torch sees no CUDA device (a CPU build of torch? install a CUDA build into .venv)")
d = torch.device(sys.argv[1] if sys.argv[1] != "cuda" else "cuda:0")
p = torch.cuda.get_device_properties(d)
print(f"torch {torch.__version__} CUDA {torch.version.cuda}; {d}: {p.name}, {p.total_memory / 2**30:.0f} GiB, "
      f"capability {p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}")
EOF

step "CUDA tests"
# The files holding the real-GPU tests; each also runs its CPU tests with simulated devices.
timeout 180 "$PY" -m pytest -q -p no:cacheprovider tests/server/engine/test_cuda.py tests/server/engine/test_device.py \
    tests/server/engine/test_staging.py tests/server/engine/test_upload.py tests/server/test_device_failures.py \
    2>&1 | tee "$OUT_DIR/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("CUDA tests")

step "chorus serve on $DEVICE"
store=$(mktemp -d)
CHORUS_DEVICE=$DEVICE CHORUS_STORE=$store/store CHORUS_DATA_DIR=$store \
    "$PY" -m chorus_server.cli serve --port "$PORT" >"$OUT_DIR/serve.log" 2>&1 &
server=$!
"$PY" - "$PORT" "$DEVICE" <<'EOF' | tee "$OUT_DIR/serve.txt"
import json, sys, time, urllib.request, uuid
port, device = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 180
while True:
    try:
        ready = json.load(urllib.request.urlopen(f"{base}/readyz", timeout=5))
        break
    except Exception as exc:  # not up yet
        if time.monotonic() > deadline:
            sys.exit(f"gpu-check: /readyz not ready after 180 s: {exc}")
        time.sleep(1)
print("readyz:", json.dumps(ready))
if not str(ready.get("device", "")).startswith("cuda"):
    sys.exit(f"gpu-check: the server runs on {ready.get('device')!r}, not the GPU")
boundary = uuid.uuid4().hex
audio = open("server/chorus_server/demo_model/samples/en-1.wav", "rb").read()
body = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nen\r\n--{boundary}\r\n'
        f'Content-Disposition: form-data; name="file"; filename="en-1.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        ).encode() + audio + f"\r\n--{boundary}--\r\n".encode()
request = urllib.request.Request(f"{base}/v1/audio/transcriptions", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
start = time.monotonic()
text = json.load(urllib.request.urlopen(request, timeout=60))["text"]
print(f"transcription ({(time.monotonic() - start) * 1000:.0f} ms): {text!r}")
if not text.strip():
    sys.exit("gpu-check: empty transcription")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("chorus serve")
kill "$server" 2>/dev/null
wait "$server" 2>/dev/null
rm -rf "$store"

step "benchmarks on $DEVICE"
bench() {
    local name=$1
    shift
    timeout 170 "$PY" -m "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("$name")
}
bench backbone_speed benchmarks.backbone_speed --device "$DEVICE" --reps 3 --out "$OUT_DIR/backbone_speed.json"
bench multi_tenant benchmarks.multi_tenant --device "$DEVICE" --reps 3 --out "$OUT_DIR/multi_tenant.json"
bench server_load benchmarks.server_load --preset base --device "$DEVICE" --dtype bfloat16 --clip 10 --requests 48 \
    --concurrency 1 16 --pairs 5 --json "$OUT_DIR/server_load.json"

if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu-check: FAILED: ${failed[*]} (logs in $OUT_DIR)"
    exit 1
fi
echo "gpu-check: all passed (logs and results in $OUT_DIR)"
