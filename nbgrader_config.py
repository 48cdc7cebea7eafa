"""nbgrader configuration of the course, read by `nbgrader ...` and JupyterLab run from this folder.

The instructor's notebooks live in solutions/<assignment>/ (nbgrader's "source" step) and the
released ones in exercises/<assignment>/ ("release"). `llmcourse release` and `llmcourse grade`
build throw-away courses with the same settings (llmcourse.grading.settings).
"""

from pathlib import Path

from llmcourse.grading.settings import apply_grading_settings, exchange_root

c = get_config()  # noqa: F821 - provided by traitlets when it loads this file

c.CourseDirectory.root = str(Path(__file__).resolve().parent)
c.CourseDirectory.course_id = "llmcourse"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"

# nbgrader's default exchange, /srv/nbgrader/exchange, is not writable for most users.
exchange_root().mkdir(parents=True, exist_ok=True)
c.Exchange.root = str(exchange_root())

apply_grading_settings(c)  # cell timeout 60 s, deleted test cells restored, stderr not a failure

# nbgrader's own `autograde` (and the formgrader's Autograde button) runs submissions in a plain,
# unsandboxed kernel. Grade work you do not trust with `llmcourse grade`, which runs each notebook
# in a bubblewrap sandbox with limits (see the instructor guide, instructor_guide.md).
