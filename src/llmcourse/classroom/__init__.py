"""A class on one machine: JupyterHub, nbgrader's exchange and the course's sandboxed grader.

- ``roster``: who is in the class, with password hashes; ``auth``: JupyterHub's login against it;
- ``accounts``: one Unix account per person (as root), homes closed to others;
- ``hub``: the class's folders, settings, shared models and JupyterHub itself;
- ``instructor``: release, collect, sandboxed grading into nbgrader's gradebook, feedback, grades out;
- ``formgrader``: the formgrader's own autograde and feedback buttons turned into a pointer to ``class grade``;
- ``commands``: ``llmcourse class setup|start|release|grade|grades|remove``.
"""
