"""llmcourse: the small library behind the course on large language models.

One module per idea: ``attention`` (scaled dot-product and multi-head attention, masks),
``device`` (device, dtype and seeding), ``data`` (the Shakespeare corpus), ``models``
(offline models), ``plots`` (figures), ``grading`` (auto-grading of the exercises).
"""

__version__ = "0.1.0"
