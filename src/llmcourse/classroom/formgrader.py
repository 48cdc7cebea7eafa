"""What a class's formgrader may not do: nbgrader's own autograde and feedback.

nbgrader's *Autograde* button would run a submission with the instructor's rights, outside the
course's sandbox, and its *Generate Feedback* button would render the graded notebook with its
hidden tests (source and tracebacks) for *Release Feedback* to hand out. In a class both stand
in for ``llmcourse class grade``, which grades in the sandbox and writes feedback pages without
the hidden tests. The class's nbgrader settings put ``UseClassGrade`` first in both pipelines,
so the buttons stop with a message that says what to run (nbgrader has by then removed that
student's earlier graded copy or page; the command puts them back).
"""

from __future__ import annotations

from typing import Any

from nbconvert.preprocessors import Preprocessor

REFUSAL = ("in this class, grading and feedback come from `llmcourse class grade {assignment}` (as root): it grades "
           "in the course's sandbox and its feedback never shows hidden tests. nbgrader's own would run the "
           "submission with your rights and release the hidden tests. Run that command; it also puts back what "
           "this button removed.")


class UseClassGrade(Preprocessor):
    """Refuses to autograde or to generate feedback, naming the command that does it safely."""

    def __call__(self, nb: Any, resources: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        return self.preprocess(nb, resources)  # always: nbconvert skips a preprocessor left disabled

    def preprocess(self, nb: Any, resources: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        assignment = resources.get("nbgrader", {}).get("assignment", "ASSIGNMENT")
        raise RuntimeError(REFUSAL.format(assignment=assignment))
