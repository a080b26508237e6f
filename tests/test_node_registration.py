"""Node keys against the SuperLink's persistent state: a key registered by an earlier start keeps its node id, a key
taken out of --auth-keys is unregistered, and --fresh forgets the state. Flower's CLI is replaced by a fake that
behaves like its SQLite state (unit tier; tests/test_e2e.py restarts a real one)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from xincept.server import superlink


class FakeFlowerCli:
    """`flwr supernode register / list / unregister` over a dict, as the SuperLink's state file keeps them."""

    def __init__(self) -> None:
        self.by_key: dict[str, int] = {}
        self.status: dict[int, str] = {}
        self.calls: list[list[str]] = []
        self.runs: dict[int, str] = {}

    def __call__(self, args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
        self.calls.append(args)
        if args[:2] == ["supernode", "register"]:
            key = Path(args[2]).read_text()
            if key in self.by_key:
                return subprocess.CompletedProcess(args, 1, "", "Public key already in use.")
            node = 1000 + len(self.by_key)
            self.by_key[key], self.status[node] = node, "registered"
            return subprocess.CompletedProcess(args, 0, json.dumps({"success": True, "node-id": node}), "")
        if args[:2] == ["supernode", "list"]:
            nodes = [{"node-id": str(n), "status": s} for n, s in self.status.items()]
            return subprocess.CompletedProcess(args, 0, json.dumps({"success": True, "nodes": nodes}), "")
        if args[:2] == ["supernode", "unregister"]:
            self.status[int(args[2])] = "unregistered"
            return subprocess.CompletedProcess(args, 0, json.dumps({"success": True}), "")
        if args == ["ls"]:
            runs = [{"run-id": str(r), "status": s} for r, s in self.runs.items()]
            return subprocess.CompletedProcess(args, 0, json.dumps({"success": True, "runs": runs}), "")
        if args[0] == "stop":
            self.runs[int(args[1])] = "finished:stopped"
            return subprocess.CompletedProcess(args, 0, json.dumps({"success": True}), "")
        raise AssertionError(args)


def _keys(folder: Path, sites: list[str]) -> list[Path]:
    folder.mkdir(exist_ok=True)
    for s in sites:
        (folder / f"{s}.key.pub").write_text(f"key of {s}")
    return sorted(folder.glob("*.pub"))


def test_a_restart_keeps_node_ids_and_a_removed_key_is_revoked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = FakeFlowerCli()
    monkeypatch.setattr(superlink, "_flwr", cli)
    keys = _keys(tmp_path / "nodes", ["hospital-a", "hospital-b"])
    first = superlink.register_nodes(keys, {}, tmp_path)
    assert sorted(first.values()) == ["hospital-a", "hospital-b"]
    # the server restarts on the same state file: the same node ids, nothing unregistered
    again = superlink.register_nodes(keys, {}, tmp_path, known=first)
    assert again == first
    assert not any(c[:2] == ["supernode", "unregister"] for c in cli.calls)
    # the operator removes hospital-b's key: at the next start its node is unregistered (revoked)
    (tmp_path / "nodes" / "hospital-b.key.pub").unlink()
    kept = superlink.register_nodes(sorted((tmp_path / "nodes").glob("*.pub")), {}, tmp_path, known=again)
    assert list(kept.values()) == ["hospital-a"]
    revoked = next(n for n, s in first.items() if s == "hospital-b")
    assert cli.status[revoked] == "unregistered"


def test_a_registered_key_without_its_record_is_refused_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = FakeFlowerCli()
    monkeypatch.setattr(superlink, "_flwr", cli)
    keys = _keys(tmp_path / "nodes", ["hospital-a"])
    superlink.register_nodes(keys, {}, tmp_path)
    with pytest.raises(superlink.ServerError, match="--fresh"):
        superlink.register_nodes(keys, {}, tmp_path, known={})


def test_fresh_forgets_the_superlink_state(tmp_path: Path) -> None:
    from xincept.server.interrupt import claim_out_dir

    state = tmp_path / "superlink"
    state.mkdir()
    (state / "superlink.db").write_bytes(b"sqlite")
    (state / "node-names.json").write_text("{}")
    claim_out_dir(tmp_path, resume=True, fresh=False)
    assert (state / "superlink.db").is_file()  # --resume keeps the registrations
    claim_out_dir(tmp_path, resume=False, fresh=True)
    assert not (state / "superlink.db").exists() and not (state / "node-names.json").exists()


def test_the_superlink_keeps_its_state_in_a_file_in_the_state_folder(tmp_path: Path) -> None:
    cmd = superlink.superlink_command(superlink.LinkOptions(insecure=True), tmp_path, tmp_path / "secret")
    assert cmd[cmd.index("--database") + 1] == str(tmp_path / "superlink.db")


def test_a_restart_stops_the_runs_the_killed_start_left_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed start leaves its run "running" in the SuperLink's state; the next start stops it (and only it) before
    the hospitals' port opens, so reconnecting sites are not handed the dead run's message."""
    cli = FakeFlowerCli()
    cli.runs = {7: "finished:completed", 8: "running", 9: "pending"}
    monkeypatch.setattr(superlink, "_flwr", cli)
    assert superlink.stop_stale_runs({}, tmp_path) == [8, 9]
    assert [c for c in cli.calls if c[0] == "stop"] == [["stop", "8"], ["stop", "9"]]
    assert superlink.stop_stale_runs({}, tmp_path) == []  # nothing left open
