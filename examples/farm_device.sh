#!/usr/bin/env bash
# A device farm (docs/lut.md): fill the latency table of a device other than this host's built-in
# ones, check how well it predicts, then search against it. Run the `farm run` and `lut validate`
# lines on the device itself (here: ONNX Runtime on this machine's CPU, named my-laptop-ort), with
# NAS_SERVER_URL and NAS_API_KEY (a key with lut:write and searches:read) pointing at the server.
set -euo pipefail
DEVICE=${DEVICE:-my-laptop-ort}
OPTIONS=(-o resolution=64 -o num_classes=10)

nas devices add "$DEVICE" --runtime onnxruntime --hardware "$(uname -m) CPU"
nas farm run --device "$DEVICE" --backend onnxruntime --space efficientformerv2 "${OPTIONS[@]}" --calibrate 40
nas lut validate --device "$DEVICE" --backend onnxruntime --space efficientformerv2 "${OPTIONS[@]}" --samples 20
nas devices list

# The search: the same spec as examples/efficientformerv2_small.json, priced on the farm's device.
sed "s/latency:host-cpu-torch/latency:$DEVICE/g" "$(dirname "$0")/efficientformerv2_small.json" > /tmp/farm-search.json
nas search submit /tmp/farm-search.json --wait
