"""Stage scripts as DVC runs them: outputs first, then a one-line stop when the data cannot go on."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import yaml

from conftest import REPO, image_folder, subprocess_env
from recipe.data.sources import ingest


def run_stage(cwd, *args):
    shutil.copy(REPO / "dvc.yaml", cwd)  # a stage reads its params list from dvc.yaml
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          env=subprocess_env(PYTHONPATH=str(REPO), DVC_ROOT=str(cwd)))


def test_audit_with_one_class_writes_its_outputs_then_stops_with_one_line(tmp_path, params):
    ingest(source="folder", task="single_label",
           out=tmp_path / "raw", seed=0, limit=None, path=str(image_folder(tmp_path / "src", {"only": 12})))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run_stage(tmp_path, "stages.audit", "--raw", "raw", "--manifest", "out/manifest.csv",
                     "--report", "out/report.json", "--plots", "out/plots")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: audit: 1 class(es) with usable images; a classifier needs at least 2 (see outputs/audit/manifest.csv)"
    )
    assert "Traceback" not in proc.stderr
    assert len(pd.read_csv(tmp_path / "out/manifest.csv")) == 12  # the evidence is there to look at
    assert (tmp_path / "out/plots/samples.png").exists()
    assert (tmp_path / "mlflow.db").exists()  # and the failed run is in the store
