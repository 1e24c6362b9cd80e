"""The deployed revisions' folders, `{workdir}/deployed/{revision}/`: pruned to what can run.

Each revision the agent verifies gets a folder with its flow files (`{flow}.yaml`, references
made local). What reads them again: the supervisor's instances of the running revision (its
flows' relative paths resolve there), and a rollback, which rebuilds the flow files of the
revision it goes back to (current, else last good: `Agent._roll_back`) from the state file and
the cache. So after each revision ends (applied, failed, rolled back) only the folders of
current, last good and a pending revision stay; older ones go.

A flow's relative data paths (a SQLite sink's `path: history.db`) resolve in
`{workdir}/flows/{flow}/`, the same folder for every revision (`Agent._write_flows`), so a
revision's folder holds flow files only. A folder that holds anything else (written by an
older agent, which resolved data paths in the revision's folder) is data, not ours: only the
flow files and stale write temporaries are removed and the folder stays (said once per prune),
so pruning never deletes what an instance wrote.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from shared.files import remove_stale_temporaries

log = logging.getLogger(__name__)


def prune(folder: Path, keep: set[int]) -> list[int]:
    """Remove the revision folders under `folder` not in `keep`; the revisions removed."""
    if not folder.is_dir():
        return []
    removed, held = [], []
    for path in sorted(folder.iterdir()):
        if not path.is_dir() or not path.name.isdigit() or int(path.name) in keep:
            continue
        remove_stale_temporaries(path)
        for flow_file in path.glob("*.yaml"):
            flow_file.unlink(missing_ok=True)
        if any(path.iterdir()):
            held.append(path.name)
            continue
        shutil.rmtree(path, ignore_errors=True)  # empty: rmdir, also if it went meanwhile
        removed.append(int(path.name))
    if held:
        log.warning(
            "agent: deployed revision folder(s) %s kept: they hold files an instance wrote "
            "(a flow's relative path); move them out and remove the folders",
            ", ".join(held),
        )
    if removed:
        log.info("agent: removed the deployed files of revision(s) %s", removed)
    return removed
