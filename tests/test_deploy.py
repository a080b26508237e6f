"""deploy/: the compose file and Kubernetes manifests validate against their schemas; the native topology runs."""

from __future__ import annotations

import json
import os
import subprocess
from importlib import resources
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_compose_file_matches_the_compose_spec_and_uses_tls_and_node_keys() -> None:
    import jsonschema

    schema = json.loads((resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json").read_text())
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    assert errors == []
    server = doc["services"]["superlink"]["command"]
    assert "--tls-dir" in server and "--auth-keys" in server and "--insecure" not in server
    hospitals = [s for name, s in doc["services"].items() if name.startswith("hospital-")]
    assert len(hospitals) == 3
    for h in hospitals:
        assert {"--root-cert", "--auth-key", "--cache-dir", "--tls-dir", "--state-dir"} <= set(h["command"])
    mounts = [v for s in doc["services"].values() for v in s.get("volumes", [])]
    assert not any("ca-offline" in v or "ca.key" in v for v in mounts)  # the CA's private key is mounted nowhere


@pytest.mark.parametrize("manifest", ["server.yaml", "site.yaml"])
def test_kubernetes_manifests_validate_strictly(manifest: str) -> None:
    import kubernetes_validate

    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / manifest).read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "PersistentVolumeClaim"} <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, "1.31", strict=True)  # raises with the offending field
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    if manifest == "site.yaml":
        assert {"--tls-dir", "--state-dir"} <= set(container["args"])
    assert "livenessProbe" in container and ("readinessProbe" in container or "startupProbe" in container)
    assert any("secret" in v for v in pod["volumes"]) and any("persistentVolumeClaim" in v for v in pod["volumes"])


@pytest.mark.e2e
def test_local_e2e_script_runs_the_deployment_topology(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path / "home"), "XINCEPT_E2E_TIMEOUT": "480"}
    res = subprocess.run(["bash", str(DEPLOY / "local-e2e.sh"), str(tmp_path / "work")], env=env, capture_output=True, text=True,
                         timeout=560)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert "OK: accuracy" in res.stdout
    assert (tmp_path / "work" / "out" / "model" / "model.json").is_file()
    secrets = tmp_path / "work" / "secrets"
    assert not list((secrets / "server").rglob("ca.key")) and (secrets / "ca-offline" / "ca.key").is_file()
    assert all((secrets / s / "xgb" / "client.key").is_file() for s in ("hospital-a", "hospital-b", "hospital-c"))
    keys = [p for p in secrets.rglob("*") if p.is_file() and p.suffix == ".key"]
    assert keys and all(p.stat().st_mode & 0o077 == 0 for p in keys)
