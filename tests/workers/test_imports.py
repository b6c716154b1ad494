"""The training path never loads optuna, ray or sqlalchemy (a GPU box has only torch+lightning)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SNIPPET = """
import json, sys
import workers
from workers import TrialRequest, run_trial
from search_spaces.spec import ArchitectureSpec, StageSpec
spec = ArchitectureSpec(stages=(StageSpec(depth=1, width=4),), stem_width=4, in_channels=1)
result = run_trial(TrialRequest(spec=spec.to_dict(), config={"epochs": 1, "cpu_threads": 1}))
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"optuna", "ray", "sqlalchemy", "alembic"})
print(json.dumps({"state": result.state, "reason": result.reason, "heavy": heavy}))
"""


def test_run_trial_import_path_loads_no_optuna_ray_or_sqlalchemy():
    proc = subprocess.run(
        [sys.executable, "-c", _SNIPPET],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["state"] == "complete", report
    assert report["heavy"] == []


def test_plain_data_names_import_without_torch():
    code = "import sys, workers; workers.TrainConfig().recipe_id; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
