"""The agent's state file: every step survives a kill, and a cut-short revision is dropped;
the deployed folders pruned to the kept revisions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.agent.deployed import prune
from edgefleet.agent.state import AgentState, Revision, StateFile
from shared.errors import ConfigError


def rev(n: int, *blobs: str) -> Revision:
    flows = [{"name": "f", "resources": [{"sha256": b} for b in blobs]}]
    return Revision(revision=n, deployment=f"d{n}", desired={"flows": flows})


def test_apply_cycle_moves_current_to_last_good(tmp_path: Path) -> None:
    f = StateFile(tmp_path / "agent.json")
    s = f.save(AgentState().begin(rev(1, "a")).step("activating").applied())
    assert s.current and s.current.revision == 1 and s.last_good is None
    s = f.save(s.begin(rev(2, "b")))
    assert s.revision == 2 and s.keep() == {"a", "b"}
    s = f.save(s.step("downloading").step("activating").applied())
    assert f.load() == s
    assert s.current and s.current.revision == 2
    assert s.last_good and s.last_good.revision == 1
    assert s.keep() == {"a", "b"} and s.kept_revisions() == {1, 2}
    s = s.begin(rev(3, "c")).applied()
    assert s.kept_revisions() == {2, 3} and s.keep() == {"b", "c"}


@pytest.mark.parametrize("step", ["received", "downloading", "verifying", "activating"])
def test_killed_mid_apply_recovers_to_current(tmp_path: Path, step: str) -> None:
    path = tmp_path / "agent.json"
    StateFile(path).save(AgentState().begin(rev(1, "a")).applied())
    # a separate process saves the pending step, then dies by SIGKILL as a power cut would
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from edgefleet.agent.state import StateFile, Revision\n"
        f"f = StateFile(Path({str(path)!r}))\n"
        f"f.save(f.load().begin(Revision(revision=2)).step({step!r}))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert done.returncode == -9
    assert StateFile(path).load().pending is not None  # the step was on disk before the kill
    recovered = StateFile(path).recover()
    assert recovered.pending is None
    assert recovered.current and recovered.current.revision == 1
    assert StateFile(path).load() == recovered


def test_a_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    path.write_text('{"v": 9}')
    with pytest.raises(ConfigError, match="not an agent state file"):
        StateFile(path).load()


def test_prune_removes_the_flow_files_of_revisions_not_kept_and_never_data(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "deployed"
    for revision in (1, 2, 3, 4):
        (folder / str(revision)).mkdir(parents=True)
        (folder / str(revision) / "pump.yaml").write_text("name: pump\n")
    # an instance of revision 1 wrote its history through a relative sink path
    (folder / "1" / "history.db").write_bytes(b"data")
    (folder / "notes").mkdir()  # not a revision: not ours
    assert prune(folder, {3, 4}) == [2]
    assert sorted(p.name for p in folder.iterdir()) == ["1", "3", "4", "notes"]
    assert [p.name for p in (folder / "1").iterdir()] == ["history.db"]
    assert (folder / "3" / "pump.yaml").exists() and (folder / "4" / "pump.yaml").exists()
    assert prune(tmp_path / "none", set()) == []
