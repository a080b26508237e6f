#!/usr/bin/env bash
# Create the pilot PKI for deploy/compose.yaml: CA + server certificate, and one node key per hospital,
# laid out as the containers mount them. In production use your organisation's CA instead.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/secrets}"
sites=(hospital-a hospital-b hospital-c)
site_args=()
for s in "${sites[@]}"; do site_args+=(--site "$s"); done
xincept-server keys --out "$out/server" --host superlink --host localhost --host 127.0.0.1 "${site_args[@]}"
rm -rf "$out/ca-offline"
mv "$out/server/ca" "$out/ca-offline"                        # the CA's private key: never mounted into the server
for s in "${sites[@]}"; do
  mkdir -p "$out/$s"
  cp "$out/server/ca.crt" "$out/$s/ca.crt"
  mv "$out/server/nodes/$s.key" "$out/$s/node.key"          # the private key goes to its site only
  cp "$out/server/nodes/$s.key.pub" "$out/$s/node.key.pub"
  rm -rf "$out/$s/xgb"
  mv "$out/server/sites/$s" "$out/$s/xgb"                    # this site's own XGBoost client certificate (--tls-dir)
done
rmdir "$out/server/sites"
chmod -R go-rwx "$out"
echo "secrets in $out (server: $out/server, sites: ${sites[*]}; CA key: $out/ca-offline, keep it offline)"
