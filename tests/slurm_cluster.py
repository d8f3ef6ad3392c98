"""A real single-node Slurm for the sweep's Slurm tests: munged, slurmctld
and slurmd on 127.0.0.1, started by tests/start_slurm.sh in a folder of the
test session's own (its generated slurm.conf reached through SLURM_CONF, so
nothing of the machine's is changed) and stopped, with every job, at the end
of the session. Where Slurm is not installed or cannot start (not root, no
munge) the tests that need it skip with the reason, except in CI (CI=true;
.ci/run installs Debian's slurmctld, slurmd, slurm-client and munge), where
they fail instead."""
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "tests", "start_slurm.sh")
INSTALL = "apt-get install slurmctld slurmd slurm-client munge, as root"


def unavailable(message):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI=true: .ci/run installs Slurm, so CI must run these tests", pytrace=False)
    pytest.skip(message)


class Slurm:
    """The started cluster: ``env`` reaches it (SLURM_CONF)."""

    def __init__(self, folder):
        self.folder = str(folder)
        self.conf = os.path.join(self.folder, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)

    def squeue(self):
        """Job ids in the queue (any state)."""
        done = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    def stop(self):
        subprocess.run(["bash", SCRIPT, "--stop", self.folder], capture_output=True, timeout=60)


def start(folder):
    """A started Slurm in ``folder``, or skip (fail under CI=true) saying why not."""
    if os.name != "posix" or os.geteuid() != 0:
        unavailable(f"the Slurm tests start slurmd, which runs jobs as their users: they need root ({INSTALL})")
    slurm = Slurm(folder)
    try:
        done = subprocess.run(["bash", SCRIPT, slurm.folder], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        slurm.stop()
        unavailable(f"Slurm did not start within 120 s (tests/start_slurm.sh {slurm.folder})")
    if done.returncode != 0:
        slurm.stop()
        why = done.stderr.strip().replace("\n", " ") or f"exit {done.returncode}"
        unavailable(f"no Slurm to test against: {why}")
    return slurm


@pytest.fixture(scope="session")
def slurm():
    # not under pytest's tmp folders: those are the user's alone, and munged runs as the munge user
    folder = tempfile.mkdtemp(prefix="fxnn-slurm-")
    try:
        started = start(folder)
        try:
            yield started
        finally:
            started.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
