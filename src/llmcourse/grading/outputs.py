"""The grader's one limit on what a cell may print, applied to each output as it arrives.

A submission can print gigabytes, display an image of any size, update one display again and again
or raise an error with an enormous message. Whatever it does, a cell keeps at most
``MAX_OUTPUT_CHARS`` characters of output (figures count a 25th of their encoded length, so a few
plots fit), so neither the grader's memory, the gradebook nor a feedback page grows with it:

- an output that fits in what is left of the cell's room is kept as it is;
- the first one that does not is cut to the room left (a stream) or replaced by a note, and the cell
  is marked as cut; later ones are dropped (or kept as empty text where a display id points at them);
- an error past the limit is kept, shortened, since nbgrader grades a test cell by whether it raised
  (one per cell: a second is dropped, the cell has failed either way);
- ``clear_output`` empties the cell, and with it its count;
- a display update (``update_display_data``) counts the size it adds to each output it replaces.

``GraderExecute`` calls ``OutputCap.admit`` from nbclient's ``output`` hook and ``OutputCap.replace``
for display updates; nothing else trims outputs afterwards.
"""

from __future__ import annotations

import json
from typing import Any

from nbformat import NotebookNode

IMAGE_WEIGHT = 25  # an image's encoded characters count this much less against the limit
TRUNCATED = "\n[... output truncated by the grader: more than {limit} characters ...]\n"
ERROR_VALUE_CHARS = 2000  # an error's message is cut to this many characters...
ERROR_LINES, ERROR_LINE_CHARS = 20, 500  # ...and its traceback to its last 20 lines of 500 characters


def output_size(output: NotebookNode) -> int:
    """The characters ``output`` counts against the limit (a figure's encoded length over ``IMAGE_WEIGHT``)."""
    kind = output.get("output_type")
    if kind == "stream":
        return len(output.get("text", ""))
    if kind == "error":
        return len(str(output.get("evalue", ""))) + sum(len(line) for line in output.get("traceback", []))
    return data_size(output.get("data", {})) + len(json.dumps(output.get("metadata", {})))


def data_size(data: dict[str, Any]) -> int:
    """The characters of a display's MIME bundle, images counted a 25th."""
    return sum(len(json.dumps(value)) // (IMAGE_WEIGHT if kind.startswith("image/") else 1)
               for kind, value in data.items())


def cut_text(text: Any, limit: int) -> str:
    """``text`` (a string or nbformat's list of lines) cut to ``limit`` characters, with the grader's note."""
    text = "".join(text) if isinstance(text, list) else str(text)
    return text if len(text) <= limit else text[:limit] + TRUNCATED.format(limit=limit)


def shorten_error(output: NotebookNode) -> None:
    """Cut an error output's message and traceback in place; its name, which graders read, stays."""
    output["evalue"] = cut_text(output.get("evalue", ""), ERROR_VALUE_CHARS)
    output["traceback"] = [cut_text(line, ERROR_LINE_CHARS) for line in output.get("traceback", [])[-ERROR_LINES:]]


class OutputCap:
    """At most ``limit`` characters of output per cell, enforced as each output arrives (module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used: dict[int, int] = {}  # cell index -> characters its current outputs count
        self.cut: set[int] = set()  # cells that lost output to the limit
        self.errors_over: set[int] = set()  # cells that kept an error past the limit (one is enough)

    def note(self) -> str:
        return TRUNCATED.format(limit=self.limit)

    def admit(self, outs: list[NotebookNode], out: NotebookNode, cell_index: int, has_display_id: bool) -> NotebookNode | None:
        """``out`` was just appended to ``outs``, a cell's outputs: keep it, shorten it, or drop it.

        Returns the output now in its place, or None when it was dropped.
        """
        if len(outs) == 1:  # the cell's first output, or its first since clear_output emptied it
            self.used[cell_index] = 0
            self.errors_over.discard(cell_index)
        used = self.used.get(cell_index, 0)
        room = self.limit - used
        size = output_size(out)
        if size <= room:
            self.used[cell_index] = used + size
            return out
        self.cut.add(cell_index)
        kind = out.get("output_type")
        if kind == "error":  # the first one past the limit is kept, since it decides the grade, shortened
            if cell_index in self.errors_over:
                outs.pop()
                return None
            self.errors_over.add(cell_index)
            shorten_error(out)
            self.used[cell_index] = max(used, self.limit + 1)
            return out
        if room > 0 and kind == "stream":
            text = cut_text(out.get("text", ""), room)
        else:
            text = self.note() if room > 0 else ""
        self.used[cell_index] = self.limit + 1  # full: the note is written once
        if not text and not has_display_id:
            outs.pop()
            return None
        replacement = NotebookNode(output_type="stream", name=out.get("name", "stdout"), text=text)
        outs[-1] = replacement  # the same place: a display id's recorded index stays valid
        return replacement

    def replace(self, output: NotebookNode, data: dict[str, Any], metadata: dict[str, Any], cell_index: int) -> None:
        """Give ``output`` (a display of cell ``cell_index``) new ``data``, as a display update does, within the limit."""
        used = self.used.get(cell_index, 0)
        old = output_size(output)
        new = data_size(data) + len(json.dumps(metadata))
        if output.get("output_type") == "stream" or used - old + new > self.limit:
            # An output already cut stays a note; an update that does not fit becomes one.
            if output.get("output_type") != "stream":
                self.cut.add(cell_index)
                output["data"], output["metadata"] = {"text/plain": self.note().strip()}, {}
                self.used[cell_index] = used - old + output_size(output)
            return
        output["data"], output["metadata"] = data, metadata
        self.used[cell_index] = used - old + new
