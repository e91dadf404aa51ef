"""distilkit's own processes sleep idle OpenMP threads (OMP_WAIT_POLICY=PASSIVE) unless the user
chose a policy; the variable only acts if it is set before torch loads OpenMP."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Runs in a fresh interpreter: torch must not be imported yet when the CLI starts.
PROBE = """
import os, sys
import distilkit.cli as cli

assert "torch" not in sys.modules, "importing the CLI loaded torch (and OpenMP) already"
seen = []
build_parser = cli.build_parser
cli.build_parser = lambda: (seen.append(os.environ.get("OMP_WAIT_POLICY")), build_parser())[1]
try:
    cli.main(["--help"])
except SystemExit:
    pass
print("POLICY", seen[0])
"""


@pytest.mark.parametrize("given,want", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_cli_sets_passive_wait_policy_unless_the_user_did(given, want):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Set before the subcommands (which may import torch) are even loaded.
    assert f"POLICY {want}" in proc.stdout.splitlines()


def test_the_openmp_runtime_sees_it(tmp_path):
    """End to end: GNU OpenMP reports its settings at start-up with OMP_DISPLAY_ENV=VERBOSE;
    PASSIVE shows as a spin count of 0 (its default spins 300,000 times before sleeping)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    # A command that loads torch, then fails fast on a missing model.
    args = ["export", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]
    proc = subprocess.run(
        [sys.executable, "-m", "distilkit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "GOMP_SPINCOUNT" not in proc.stderr:
        pytest.skip("torch does not use GNU OpenMP here (no OMP_DISPLAY_ENV report)")
    assert "GOMP_SPINCOUNT = '0'" in proc.stderr
