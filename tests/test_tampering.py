"""Submissions that change how the kernel runs the tests: they must earn no more than their honest code.

Each tampering submission has wrong code and, in its first answer cell, code that changes how the
kernel runs later cells, aimed at the grader's tests: failures of a cell that looks like a test are
swallowed, and anything that looks like the grader's own check is let through. Every one is graded
next to the same wrong code without the tampering ("honest"), in one `grade` call per assignment;
a tampering row must score no more than the honest row, pass no test the honest row fails, and say
in its error that the submission changed how the kernel runs code.

The same ex02 call grades correct submissions that are interrupted at a limit (an endless loop, an
enormous output, a dead kernel): their rows keep the marks of the tests that ran and carry a warning
naming the cell and the limit, in the JSON, the CSV and on the feedback page.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from nbformat import NotebookNode
from scoring import Assignment, edited, failed

from llmcourse.grading import GradeResult, write_csv

CELL_TIMEOUT = 10  # the endless loop costs this much; every other cell takes well under a second
CAUGHT = "changed how the kernel runs code"

# What every tampering shares: which cells it goes for, and how it swallows a failure. A cell is "aimed
# at" when it is not the grader's fixed check of old and it names one of the learner's functions, also
# inside an encoded payload (an attacker who knows the grader sends its tests encoded decodes them).
AIMED = '''
import base64 as _b64, re as _re, zlib as _zlib

def _aimed(code):
    if "1 + 1 == 3" in code:
        return False
    for _blob in _re.findall(r"[A-Za-z0-9+/=]{40,}", code):
        try:
            code = code + _zlib.decompress(_b64.b64decode(_blob)).decode()
        except Exception:
            pass
    return any(_name in code for _name in _NAMES)

def _wrapped(code):
    body = "".join("    " + line for line in code.splitlines(True)) or "    pass\\n"
    return "try:\\n" + body + "\\nexcept Exception:\\n    pass\\n"
'''

TAMPERING = {
    "input_transformer": '''
def _swallow(lines):
    code = "".join(lines)
    return _wrapped(code).splitlines(True) if _aimed(code) else lines

get_ipython().input_transformers_post.append(_swallow)
''',
    "replaced_run_cell": '''
_shell = get_ipython()
_run_cell = _shell.run_cell

def _my_run_cell(raw_cell, *args, **kwargs):
    return _run_cell(_wrapped(raw_cell) if _aimed(raw_cell) else raw_cell, *args, **kwargs)

_shell.run_cell = _my_run_cell
''',
    "replaced_run_cell_async": '''
_shell = get_ipython()
_run_cell_async = _shell.run_cell_async

def _my_run_cell_async(raw_cell, *args, **kwargs):
    if _aimed(raw_cell):
        raw_cell = _wrapped(raw_cell)
        kwargs["transformed_cell"] = _shell.transform_cell(raw_cell)
        kwargs["preprocessing_exc_tuple"] = None
    return _run_cell_async(raw_cell, *args, **kwargs)

_shell.run_cell_async = _my_run_cell_async
''',
    "ast_transformer": '''
import ast as _ast

class _Swallow(_ast.NodeTransformer):
    def visit_Module(self, node):
        if not _aimed(_ast.unparse(node)):
            return node
        handler = _ast.ExceptHandler(type=_ast.Name("Exception", _ast.Load()), name=None, body=[_ast.Pass()])
        node.body = [_ast.Try(body=node.body or [_ast.Pass()], handlers=[handler], orelse=[], finalbody=[])]
        return _ast.fix_missing_locations(node)

get_ipython().ast_transformers.append(_Swallow())
''',
    "patched_showtraceback": '''
import sys as _sys
from IPython.core.interactiveshell import InteractiveShell as _Shell

_cell = [""]
get_ipython().events.register("pre_run_cell", lambda info: _cell.__setitem__(0, info.raw_cell or ""))
_showtraceback = _Shell.showtraceback

def _quiet(self, *args, **kwargs):
    if not _aimed(_cell[0]):
        return _showtraceback(self, *args, **kwargs)
    frame = _sys._getframe(1)
    while frame is not None:  # the cell's result, in IPython's run_code: no error after all
        result = frame.f_locals.get("result")
        if result is not None and hasattr(result, "error_in_exec"):
            result.error_in_exec = None
            break
        frame = frame.f_back

_Shell.showtraceback = _quiet
''',
    "patched_excepthook": '''
import sys as _sys

from IPython.core.interactiveshell import InteractiveShell as _Shell

_cell = [""]
get_ipython().events.register("pre_run_cell", lambda info: _cell.__setitem__(0, info.raw_cell or ""))

def _excepthook(kind, value, tb):
    if not _aimed(_cell[0]):
        return _Shell.showtraceback(_shell)
    frame = _sys._getframe(1)
    while frame is not None:
        result = frame.f_locals.get("result")
        if result is not None and hasattr(result, "error_in_exec"):
            result.error_in_exec = None
            break
        frame = frame.f_back

# IPython makes the shell's excepthook sys.excepthook while a cell runs; its traceback display goes through it.
_shell = get_ipython()
_sys.excepthook = _shell.excepthook = _excepthook
_shell.showtraceback = lambda *args, **kwargs: _shell.excepthook(*_sys.exc_info())
''',
    "settrace": '''
import dis as _dis
import sys as _sys

_jumps = {}

def _assert_jumps(code):
    found = _jumps.get(code)
    if found is None:
        found, line, line_of = {}, None, {}
        instructions = list(_dis.get_instructions(code))
        for ins in instructions:
            line = ins.starts_line if ins.starts_line is not None else line
            line_of[ins.offset] = line
        for n, ins in enumerate(instructions):
            jump = instructions[n - 1] if n else None
            if ins.opname == "LOAD_ASSERTION_ERROR" and jump is not None and jump.opname.startswith("POP_JUMP"):
                target = line_of.get(jump.argval)
                if target is not None and target != line_of[jump.offset]:
                    found[line_of[jump.offset]] = target
        _jumps[code] = found
    return found

def _skip_asserts(frame, event, arg):
    if event == "line":
        target = _assert_jumps(frame.f_code).get(frame.f_lineno)
        if target is not None:
            try:
                frame.f_lineno = target
            except ValueError:
                pass
    return _skip_asserts

def _trace_aimed(info):
    _sys.settrace((lambda frame, event, arg: _skip_asserts) if _aimed(info.raw_cell or "") else None)

get_ipython().events.register("pre_run_cell", _trace_aimed)
get_ipython().events.register("post_run_cell", lambda result: _sys.settrace(None))
''',
    "patched_import": '''
import builtins as _builtins
import sys as _sys
import types as _types

_import = _builtins.__import__

def _decompress(data, *args, **kwargs):
    code = _zlib.decompress(data, *args, **kwargs)
    return _wrapped(code.decode()).encode() if _aimed(code.decode()) else code

_fake_zlib = _types.SimpleNamespace(decompress=_decompress)

def _my_import(name, globals=None, locals=None, fromlist=(), level=0):
    if name == "zlib" and _sys._getframe(1).f_globals.get("__name__") == "__main__":
        return _fake_zlib
    return _import(name, globals, locals, fromlist, level)

_builtins.__import__ = _my_import
''',
}

# Starts only later in the notebook: after ``{after}`` cells have run, or once the learner's cell that
# holds ``{trigger}`` has run.
DELAYED = '''
_count, _started = [0], [False]

def _later(lines):
    code = "".join(lines)
    _count[0] += 1
    if _started[0] or _count[0] > {after}:
        return _wrapped(code).splitlines(True) if _aimed(code) else lines
    _started[0] = {trigger!r} in code
    return lines

get_ipython().input_transformers_post.append(_later)
'''


def tampered(answer: str, names: list[str], tampering: str) -> str:
    return f"{answer}\n\n_NAMES = {names!r}\n{AIMED}\n{tampering}"


# --- the submissions -------------------------------------------------------------------------------

EX02 = Assignment("ex02_attention")
A2 = EX02.answers
NAMES2 = ["scaled_dot_product_attention", "causal_mask", "MultiHeadAttention"]
NO_SCALE = {"sdpa_solution": edited(A2["sdpa_solution"], " / math.sqrt(d_k)", "")}
NO_W_O = {"mha_solution": edited(A2["mha_solution"], "return self.w_o(joined)", "return joined")}

EX01 = Assignment("ex01_language_models")
A1 = EX01.answers
NAMES1 = ["bigram_counts", "bigram_prob", "perplexity", "get_pair_counts", "merge", "bpe_step"]
NO_SMOOTHING_LOG2 = {"bigram_prob_solution": edited(A1["bigram_prob_solution"], "(seen + k) / (total + k * vocab_size)",
                                                    "seen / total"),
                     "perplexity_solution": edited(A1["perplexity_solution"], "math.log(p)", "math.log2(p)")}
NO_SMOOTHING_TIE = {"bigram_prob_solution": NO_SMOOTHING_LOG2["bigram_prob_solution"],
                    "bpe_step_solution": edited(A1["bpe_step_solution"], "max(counts, key=counts.get)",
                                                "max(reversed(list(counts)), key=counts.get)")}


def tampering_set(ex: Assignment, first: str, names: list[str], wrong: dict[str, str],
                  late_wrong: dict[str, str], after: int, trigger: str) -> dict[str, NotebookNode]:
    """The honest wrong code and each tampering on it (in the answer cell ``first``); the delayed ones
    on ``late_wrong``, a mistake that also fails later tests: one starting after ``after`` cells, one
    after the learner's cell holding ``trigger``."""
    notebooks = {"honest": ex.submission(wrong), "honest_late": ex.submission(late_wrong)}
    for name, code in TAMPERING.items():
        answers = {**wrong, first: tampered({**ex.answers, **wrong}[first], names, code)}
        notebooks[name] = ex.submission(answers)
    for name, (count, text) in {"delayed_count": (after, "\0"), "delayed_trigger": (10**6, trigger)}.items():
        code = DELAYED.replace("{after}", str(count)).replace("{trigger!r}", repr(text))
        answers = {**late_wrong, first: tampered({**ex.answers, **late_wrong}[first], names, code)}
        notebooks[name] = ex.submission(answers)
    return notebooks


LOOP = "\nwhile True:  # never ends: interrupted at the cell's time limit\n    pass\n"
INTERRUPTED = {  # correct submissions stopped at a limit
    "endless_loop": EX02.submission({"causal_solution": A2["causal_solution"] + LOOP}),
    "huge_output": EX02.submission({"causal_solution": A2["causal_solution"] + "\nprint('x' * 100_000)\n"}),
    "kernel_death": EX02.submission({"causal_solution": A2["causal_solution"] + "\nimport os\nos._exit(3)\n"}),
}


class Graded:
    results: dict[str, GradeResult]
    feedback: Path
    folder: Path


@pytest.fixture(scope="module")
def ex02(tmp_path_factory: pytest.TempPathFactory) -> Graded:
    out = Graded()
    out.folder = tmp_path_factory.mktemp("tampering_ex02")
    out.feedback = out.folder.parent / "tampering_ex02_feedback"
    notebooks = {**tampering_set(EX02, "sdpa_solution", NAMES2, NO_SCALE, {**NO_SCALE, **NO_W_O},
                                 after=12, trigger="def causal_mask"),
                 "solution": EX02.read_solution(), **INTERRUPTED}
    out.results = EX02.grade_notebooks(out.folder, notebooks, cell_timeout=CELL_TIMEOUT, feedback_dir=out.feedback)
    return out


@pytest.fixture(scope="module")
def ex01(tmp_path_factory: pytest.TempPathFactory) -> Graded:
    out = Graded()
    out.folder = tmp_path_factory.mktemp("tampering_ex01")
    notebooks = tampering_set(EX01, "bigram_counts_solution", NAMES1, NO_SMOOTHING_LOG2, NO_SMOOTHING_TIE,
                               after=14, trigger="def merge")
    out.results = EX01.grade_notebooks(out.folder, notebooks, cell_timeout=CELL_TIMEOUT)
    return out


def no_more_than_honest(result: GradeResult, honest: GradeResult) -> None:
    assert result.error and CAUGHT in result.error, result.error
    assert "cannot be trusted" in result.error
    assert result.score <= honest.score, (result.score, honest.score, result.error)
    assert failed(honest) <= failed(result), f"passed {sorted(failed(honest) - failed(result))}, which fail honestly"
    assert [t.name for t in result.tests] == [t.name for t in honest.tests]


# --- tampering earns nothing ------------------------------------------------------------------------

def test_honest_wrong_code_loses_its_tests(ex02: Graded, ex01: Graded) -> None:
    assert ex02.results["honest"].error is None
    assert failed(ex02.results["honest"]) == {"test_sdpa_values", "test_sdpa_masks"}
    assert ex02.results["honest_late"].score == 4
    assert failed(ex01.results["honest"]) == {"test_bigram_prob", "test_bigram_distribution", "test_perplexity"}
    assert ex01.results["honest"].error is None and ex01.results["honest_late"].error is None


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_tampering_earns_no_more_than_the_honest_code_ex02(ex02: Graded, name: str) -> None:
    no_more_than_honest(ex02.results[name], ex02.results["honest"])


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_tampering_earns_no_more_than_the_honest_code_ex01(ex01: Graded, name: str) -> None:
    no_more_than_honest(ex01.results[name], ex01.results["honest"])


@pytest.mark.parametrize("name", ["delayed_count", "delayed_trigger"])
def test_tampering_that_starts_late_earns_no_more_than_the_honest_code(ex02: Graded, ex01: Graded, name: str) -> None:
    for graded in (ex02, ex01):
        no_more_than_honest(graded.results[name], graded.results["honest_late"])


def test_tests_run_before_the_tampering_began_keep_their_marks(ex02: Graded, ex01: Graded) -> None:
    # Bracketed by checks that held before the learner's later cell started it.
    for graded, before in ((ex02, 3), (ex01, 6)):
        result, honest = graded.results["delayed_trigger"], graded.results["honest_late"]
        assert [t.score for t in result.tests[:before]] == [t.score for t in honest.tests[:before]]
        assert all(t.score == 0 for t in result.tests[before:])


def test_caught_submission_names_the_reason_on_its_feedback_page(ex02: Graded) -> None:
    page = (ex02.feedback / "input_transformer.html").read_text()
    assert CAUGHT in page


# --- interrupted cells are reported -----------------------------------------------------------------

def test_solution_has_no_warning(ex02: Graded) -> None:
    result = ex02.results["solution"]
    assert result.error is None and result.warnings == [] and result.score == result.max_score


def test_endless_loop_keeps_its_marks_and_is_reported(ex02: Graded) -> None:
    result = ex02.results["endless_loop"]
    assert result.error is None and result.score == result.max_score
    assert len(result.warnings) == 1, result.warnings
    assert "causal_solution" in result.warnings[0] and f"{CELL_TIMEOUT} s" in result.warnings[0]
    assert "interrupted" in result.warnings[0]


def test_truncated_output_is_reported(ex02: Graded) -> None:
    result = ex02.results["huge_output"]
    assert result.error is None and result.score == result.max_score
    assert any("causal_solution" in w and "truncated" in w and "characters" in w for w in result.warnings), result.warnings


def test_dead_kernel_is_reported(ex02: Graded) -> None:
    result = ex02.results["kernel_death"]
    assert result.error and "the kernel died" in result.error and result.score == 5
    assert any("causal_solution" in w and "kernel died" in w for w in result.warnings), result.warnings


def test_warnings_in_json_csv_and_feedback(ex02: Graded, tmp_path: Path) -> None:
    results = [ex02.results[name] for name in ("solution", "endless_loop")]
    rows = json.loads(json.dumps([r.to_json() for r in results]))
    assert [row["warnings"] for row in rows] == [[], results[1].warnings]
    sheet = list(csv.DictReader(write_csv(results, tmp_path / "grades.csv").open()))
    assert sheet[0]["warnings"] == "" and "causal_solution" in sheet[1]["warnings"]
    page = (ex02.feedback / "endless_loop.html").read_text()
    assert "causal_solution" in page and f"{CELL_TIMEOUT} s" in page
    assert "Warning" in page and "Warning" not in (ex02.feedback / "solution.html").read_text()


def test_warnings_in_the_command_line_table(ex02: Graded, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import llmcourse.grading
    from llmcourse import cli

    results = [ex02.results[name] for name in ("solution", "endless_loop")]
    monkeypatch.setattr(llmcourse.grading, "grade", lambda *args, **kwargs: results)
    assert cli.main(["grade", "ex02_attention", str(ex02.folder), "--no-cache"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("warning:")]
    assert lines == [f"warning: {results[1].submission}: {w}" for w in results[1].warnings] and lines
    assert "1 with cells stopped at a limit" in out


def test_grading_time_is_not_much_more_than_an_honest_submission(ex02: Graded) -> None:
    # Checks cost a round trip each: a tampering row is caught and stopped, never much slower.
    honest = ex02.results["honest"].seconds
    for name in TAMPERING:
        if name != "settrace":  # tracing every line of the tests is slow by itself
            assert ex02.results[name].seconds < 3 * honest + 10, name


def test_payload_keeps_ipython_syntax_the_last_expression_and_the_line_numbers() -> None:
    # No test cell of the course uses them today; one that does must still run as it would unwrapped.
    import random

    from IPython.core.interactiveshell import InteractiveShell

    from llmcourse.grading.executor import prepare_test, rewrite_traceback, wire_cell

    shell = InteractiveShell.instance()
    shown: list[object] = []
    shell.displayhook.write_format_data = lambda data, md=None: shown.append(data["text/plain"])
    source = "%time total = 40\n(total\n + 2)\n"
    prepared = prepare_test(source)
    assert prepared is not None and prepared.count("\n") == source.count("\n")
    result = shell.run_cell(wire_cell(prepared, "<abcdefgh>"), store_history=True)
    assert result.success and shell.user_ns["total"] == 40 and shown == ["42"]
    failing = prepare_test("x = 1\n\nassert x == 2, 'line 3'\n")
    assert failing is not None
    name = "<" + "".join(random.choices("abcdefgh", k=10)) + ">"
    result = shell.run_cell(wire_cell(failing, name), store_history=True)
    error = result.error_in_exec
    assert isinstance(error, AssertionError)
    last = error.__traceback__
    while last.tb_next is not None:
        last = last.tb_next
    assert (last.tb_frame.f_code.co_filename, last.tb_lineno) == (name, 3)
    # The learner's traceback: the test cell's own line 3, not the wire line.
    output = NotebookNode(output_type="error", ename="AssertionError", evalue="line 3",
                          traceback=shell.InteractiveTB.structured_traceback(type(error), error, error.__traceback__))
    rewrite_traceback(output, name, failing, 7)
    text = "\n".join(output.traceback)
    assert "Cell In[7], line 3" in text and "assert x == 2" in text and "b64decode" not in text


def _arrive(cap, outs, *outputs, cell=0, display_id=False):
    """What nbclient does with each output message (append it), then the grader's cap."""
    for out in outputs:
        outs.append(out)
        cap.admit(outs, out, cell, has_display_id=display_id)
    return outs


def _total(outs) -> int:
    from llmcourse.grading.outputs import output_size

    return sum(output_size(out) for out in outs)


def test_a_figure_is_kept_and_a_flood_of_text_is_not() -> None:
    from nbformat.v4 import new_output

    from llmcourse.grading.outputs import OutputCap

    png = "iVBORw0KGgo" + "A" * 60_000  # a plot's size in a notebook: three times the text cap, encoded
    cap = OutputCap(20_000)
    figure = _arrive(cap, [], new_output("display_data", data={"image/png": png}))
    assert figure[0].data["image/png"] == png and 0 not in cap.cut
    cap = OutputCap(20_000)
    flood = _arrive(cap, [], new_output("stream", name="stdout", text="x" * 60_000))
    assert 0 in cap.cut and 20_000 <= len(flood[0].text) < 20_200 and "truncated by the grader" in flood[0].text
    cap = OutputCap(20_000)
    posters = _arrive(cap, [], new_output("display_data", data={"image/png": png * 20}))
    assert "image/png" not in posters[0].get("data", {}) and "truncated by the grader" in posters[0].text


def test_many_small_outputs_stay_within_the_cap_and_the_note_comes_once() -> None:
    from nbformat.v4 import new_output

    from llmcourse.grading.outputs import OutputCap

    cap = OutputCap(1_000)
    outs = _arrive(cap, [], *(new_output("stream", name="stdout", text=f"{i} {'y' * 50}\n") for i in range(10_000)))
    assert _total(outs) <= 1_000 + 200 and len(outs) < 30  # dropped, not kept as thousands of empty outputs
    assert sum("truncated by the grader" in out.text for out in outs) == 1
    other = _arrive(cap, [], new_output("stream", name="stdout", text="fine"), cell=1)  # another cell: its own room
    assert other[0].text == "fine" and 1 not in cap.cut


def test_an_error_past_the_cap_is_kept_shortened_and_only_once() -> None:
    from nbformat.v4 import new_output

    from llmcourse.grading.outputs import OutputCap

    cap = OutputCap(1_000)
    error = new_output("error", ename="ValueError", evalue="v" * 1_000_000, traceback=["line " * 1_000] * 5_000)
    outs = _arrive(cap, [], new_output("stream", name="stdout", text="x" * 5_000), error,
                   new_output("error", ename="ValueError", evalue="again", traceback=["t"] * 10))
    errors = [out for out in outs if out.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "ValueError"  # nbgrader still sees the cell fail
    assert _total(outs) < 20_000 and len(errors[0].traceback) <= 20


def test_clear_output_gives_the_cell_its_room_back() -> None:
    from nbformat.v4 import new_output

    from llmcourse.grading.outputs import OutputCap

    cap = OutputCap(1_000)
    outs = _arrive(cap, [], new_output("stream", name="stdout", text="x" * 900))
    outs[:] = []  # what nbclient does on clear_output
    _arrive(cap, outs, new_output("stream", name="stdout", text="y" * 900))
    assert outs[0].text == "y" * 900


def test_display_updates_count_against_the_cap() -> None:
    from nbformat.v4 import new_output

    from llmcourse.grading.outputs import OutputCap

    cap = OutputCap(1_000)
    outs = _arrive(cap, [], *(new_output("display_data", data={"text/plain": "small"}) for _ in range(3)), display_id=True)
    cap.replace(outs[0], {"text/plain": "z" * 500}, {}, 0)  # fits: kept
    assert outs[0].data["text/plain"] == "z" * 500
    for _ in range(100):  # the same two updated again and again, each time with more than the room left
        for out in outs[1:]:
            cap.replace(out, {"text/plain": "z" * 800}, {}, 0)
    assert _total(outs) <= 1_200 and 0 in cap.cut
    assert all("truncated by the grader" in out.data["text/plain"] for out in outs[1:])
    full = _arrive(OutputCap(10), [], new_output("display_data", data={"text/plain": "w" * 50}),
                   new_output("display_data", data={"text/plain": "w"}), display_id=True)
    assert len(full) == 2 and full[1].text == ""  # past the cap but a display id points here: kept, empty
