#!/usr/bin/env bash
# The deployment topology natively (no container engine), on 127.0.0.1, with the commands the containers run:
# pilot PKI + node keys (make-secrets.sh), `xincept-server start` (TLS, node authentication), three
# `xincept-client join` hospitals. Checks the bundle, then stops everything.
#   deploy/local-e2e.sh [WORKDIR]      (default: a new temporary folder)
# Offline by default: tiny backbones with random weights on generated images (labelled as such in every
# output). Set XINCEPT_E2E_FULL=1 and XINCEPT_WEIGHTS_DIR to run the thesis backbones on staged weights.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-$(mktemp -d -t xincept-e2e-XXXXXX)}"
mkdir -p "$work"
export XINCEPT_NO_PROGRESS=1 HF_HUB_OFFLINE=1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="$(free_port)"
if [[ "${XINCEPT_E2E_FULL:-0}" == 1 ]]; then model=(); else
  model=(--no-pretrained --backbones test_resnet,test_efficientnet --input-size 80); fi
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

echo "== secrets (CA, server certificate, node keys) in $work/secrets"
bash "$here/make-secrets.sh" "$work/secrets" >/dev/null
echo "== synthetic hospital data"
python3 - "$work" <<'PY'
import sys
from pathlib import Path
from xincept.common.synthetic import write_image_folder
for i, site in enumerate(["hospital-a", "hospital-b", "hospital-c"]):
    write_image_folder(Path(sys.argv[1]) / "data" / site, per_class=14, size=64, seed=i)
PY
# one head (not fedsgd's default three): each message starts a ClientApp process, so the demonstration stays short
printf 'group-block = 2\nlocal-epochs = 1\nhead-members = 1\n' > "$work/fed.toml"

echo "== server on 127.0.0.1:$port"
setsid xincept-server start --out "$work/out" --tls-dir "$work/secrets/server" --auth-keys "$work/secrets/server/nodes" \
  --host 127.0.0.1 --port "$port" --min-sites 3 --rounds 2 --join-timeout 240 --config "$work/fed.toml" "${model[@]}" \
  > "$work/server.log" 2>&1 &
server=$!
pids+=("$server")
for site in hospital-a hospital-b hospital-c; do
  setsid xincept-client join --site "$site" --data "$work/data/$site" --server "127.0.0.1:$port" \
    --root-cert "$work/secrets/$site/ca.crt" --auth-key "$work/secrets/$site/node.key" --tls-dir "$work/secrets/$site/xgb" \
    --cache-dir "$work/cache-$site" --state-dir "$work/state-$site" \
    --clientapp-port "$(free_port)" > "$work/$site.log" 2>&1 &
  pids+=("$!")
done

status=0
timeout "${XINCEPT_E2E_TIMEOUT:-600}" tail --pid="$server" -f /dev/null || status=$?
wait "$server" || status=$?
if [[ $status -ne 0 ]]; then
  echo "FAILED: the server exited with $status; last lines of $work/server.log:" >&2
  tail -n 40 "$work/server.log" >&2
  exit 1
fi
echo "== checking the bundle"
python3 - "$work/out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
m = json.loads((out / "metrics.json").read_text())
meta = json.loads((out / "model" / "model.json").read_text())
assert sorted(m["sites"]) == ["hospital-a", "hospital-b", "hospital-c"], m["sites"].keys()
assert [r["round"] for r in m["rounds"]] == [1, 2]
assert (out / "model" / "head.safetensors").is_file() and (out / "report.html").is_file()
assert json.loads((out / "status.json").read_text())["state"] == "finished"
print(f"OK: accuracy {m['global']['accuracy']:.3f} on {m['global']['n']} held-out images at 3 sites "
      f"(weights: {meta['weights']}, generated images); bundle in {out / 'model'}")
PY
