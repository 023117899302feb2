"""The README's main command, end to end (slow: about 2-3 minutes; run with `make test-all`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_blocks_the_collapsed_baseline_and_promotes_the_mitigated_model(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "demo"
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh"), str(out)], env=env, capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "baseline blocked as expected" in proc.stdout
    assert (out / "registry" / "current").is_file()
    metrics = (out / "metrics.prom").read_text()
    assert 'fusionguard_modality_share_count{modality="visual"' in metrics
