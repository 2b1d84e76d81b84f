"""slurm/local-cluster/stop.sh without a cluster: it stops munged exactly when start.sh started it (start.sh
leaves ``munged.started`` in the cluster's folder then), through a recording stand-in for ``runuser``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stop_sh_stops_munged_only_when_start_sh_started_it(tmp_path: Path) -> None:
    bin_dir, cluster = tmp_path / "bin", tmp_path / "cluster"
    bin_dir.mkdir()
    cluster.mkdir()
    calls = tmp_path / "runuser.calls"
    runuser = bin_dir / "runuser"
    runuser.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\n')
    runuser.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TUNELAB_SLURM_DIR": str(cluster)}

    def stop() -> list[str]:
        subprocess.run([ROOT / "slurm" / "local-cluster" / "stop.sh"], env=env, check=True, capture_output=True,
                       timeout=60)
        return calls.read_text().splitlines() if calls.exists() else []

    assert stop() == []  # munged ran before start.sh: left alone
    (cluster / "munged.started").touch()
    assert stop() == ["-u munge -- /usr/sbin/munged --stop"]
    assert not (cluster / "munged.started").exists()
    assert stop() == ["-u munge -- /usr/sbin/munged --stop"]  # once
