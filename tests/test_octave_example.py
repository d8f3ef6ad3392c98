"""The manual's Octave example (docs/records.md), run as it stands in a real octave-cli with no
display, on a record in each layout."""
import os
import re
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import ROOT
from octave_tool import octave_cli, require
from fxnn.training import matfile
from fxnn.training.matfile import SnapshotSource, write_mat


def readme_example():
    with open(os.path.join(ROOT, "docs", "records.md")) as f:
        (code,) = re.findall(r"```matlab\n(.*?)```", f.read(), re.S)
    return code


@pytest.mark.parametrize("layout", ["v5", "v7.3"])
def test_the_readme_octave_example_runs_without_a_display(tmp_path, monkeypatch, layout):
    octave = octave_cli()
    require("gnuplot", "gnuplot-nox fonts-freefont-otf")  # Octave's toolkit where there is no display
    if layout == "v7.3":
        monkeypatch.setattr(matfile, "V5_MAX_VARIABLE_BYTES", 0)
    verate = np.array([0.8715, 0.1681, 0.1166, 0.0954])
    snapshots = np.arange(40, dtype=np.float32).reshape(4, 10)  # a parameter's snapshots, as the spool holds them
    snapshots.tofile(tmp_path / "spool.f32")
    assert write_mat(str(tmp_path / "rec-MNIST-fxnn.mat"), {
        "tloss": np.linspace(0.4, 0.1, 300), "terate": np.linspace(0.8, 0.1, 300),
        "vloss": verate / 4, "verate": verate,
        "meta": {"model": "fxnn", "seed": 7, "flags": {"iters_per_record": 100, "num_records": 3}},
    }, [SnapshotSource("mlp2_b", (10,), np.float32, 4, str(tmp_path / "spool.f32"))]) == layout
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = subprocess.run([octave, "--no-gui", "--quiet", "--no-init-file", "--eval", readme_example()],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180, env=dict(env, HOME=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "final validation error 9.54% (seed 7)"
    svg = ET.parse(tmp_path / "verate.svg").getroot()
    assert svg.tag.endswith("svg")
    texts = " ".join("".join(e.itertext()) for e in svg.iter() if e.tag.endswith("text"))
    assert "validation error (%)" in texts and "iteration" in texts
    assert any(e.tag.endswith(("path", "polyline")) for e in svg.iter())
