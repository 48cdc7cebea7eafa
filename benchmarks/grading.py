"""Auto-grading time per submission: ``llmcourse grade`` on ex02 with its sandbox, one job."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from llmcourse.grading import SOLUTIONS_DIR, grade, probe

ASSIGNMENT = "ex02_attention"


def autograde_seconds_per_submission(repeats: int, submissions: int = 3) -> dict[str, float]:
    """Wall seconds per submission to grade ``submissions`` copies of the solution (feedback pages included).

    The solution is the slowest honest submission: every test runs to the end. Not a ratio:
    the goal (<= 20 s) is an absolute budget for a class's grading on a laptop.
    """
    solution = SOLUTIONS_DIR / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(submissions):
            (folder / "submissions" / f"student{i}" / ASSIGNMENT).mkdir(parents=True)
            shutil.copy(solution, folder / "submissions" / f"student{i}" / ASSIGNMENT / solution.name)
        start = time.perf_counter()
        results = grade(ASSIGNMENT, [folder / "submissions"], feedback_dir=folder / "feedback", progress=False)
        seconds = time.perf_counter() - start
    if len(results) != submissions or any(r.error or r.score != r.max_score for r in results):
        raise RuntimeError(f"grading the solution went wrong: {results}")
    return {"autograde_seconds_per_submission": seconds / submissions,
            "autograde_sandboxed": float(probe().warning() is None)}
