"""One trial: ``dvc exp run -n <name> -S ...`` as a subprocess, then its objective from a metrics file.

Contract: :func:`run_experiment` runs the experiment in the project root with this interpreter
first on PATH, writes its whole output to the trial's log (and echoes it), every line through
:func:`recipe.track.tracking.mask_uri` (no password of a store reaches the log or the terminal), and raises
:class:`TrialFailed` with a one-line reason (the last error line of dvc's output) when it
fails; Ctrl-C is passed on to dvc and re-raised. :func:`read_objective` reads the objective's
dotted key from the metrics file the run wrote, or raises :class:`TrialFailed` when the file or
key is missing, the value is not a finite number, or a ``valid_*`` value was not held out.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path

import yaml

from recipe.search.config import Objective
from recipe.search.space import _number
from recipe.track.tracking import mask_uri


class TrialFailed(Exception):
    """The trial's run or metric is unusable; the message is the one-line reason."""


def run_experiment(root: Path, name: str, sets: list[str], log: Path, echo: bool) -> None:
    """``dvc exp run -n name -S ...`` in the root; its output goes to ``log`` (and the terminal)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "-n", name] + [a for s in sets for a in ("-S", s)]
    env = dict(os.environ)  # stage commands say `python`: make it this interpreter, as the Makefile does
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as f:
        f.write("$ dvc " + " ".join(cmd[3:]) + "\n")
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
        lines: deque[str] = deque(maxlen=200)  # the tail, for the reason of a failure
        try:
            for line in proc.stdout:
                line = mask_uri(line)
                f.write(line)
                lines.append(line.rstrip())
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
            proc.wait()
        except KeyboardInterrupt:  # a terminal's Ctrl-C reached dvc too; a `kill -INT` of ours did not
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if proc.returncode != 0:
        errors = [ln.strip() for ln in lines if ln.lstrip().upper().startswith("ERROR") or "error:" in ln]
        reason = errors[-1] if errors else f"exit code {proc.returncode}"
        raise TrialFailed(f"dvc exp run failed: {reason[:300]} (log: {log.relative_to(root)})")


def read_objective(root: Path, objective: Objective) -> float:
    path = root / objective.metrics
    if not path.is_file():
        raise TrialFailed(f"{objective.metrics}: not found after the run")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    node = data
    for part in objective.key.split("."):
        if not isinstance(node, dict) or part not in node:
            keys = ", ".join(sorted(node)) if isinstance(node, dict) else type(node).__name__
            raise TrialFailed(f"{objective.key}: not in {objective.metrics} (there: {keys})")
        node = node[part]
    if not _number(node) or not math.isfinite(node):
        raise TrialFailed(f"{objective.key} = {node!r} in {objective.metrics}: not a finite number")
    last = objective.key.split(".")[-1]
    if last.startswith("valid") and isinstance(data, dict) and data.get("fit_on", "train") != "train":
        raise TrialFailed(f"{objective.key}: not held out (the stage was fit on {data['fit_on']})")
    return float(node)

