"""MkDocs hook: every ``<!-- flags: MODULE -->`` line of a page becomes the flag reference of that command line,
rendered from ``MODULE.build_parser()`` when the site is built, so the pages list exactly what ``--help`` lists."""
from __future__ import annotations

import importlib
import re

MARKER = re.compile(r"^<!-- flags: ([\w.]+) -->$", re.M)


def render(module: str) -> str:
    """The flag tables of ``module``'s parser; ``<`` in a table cell (``runs/<tasks>``) is text, not HTML."""
    from mt_dnn.flags import markdown

    lines = markdown(importlib.import_module(module).build_parser()).splitlines()
    return "\n".join(line.replace("<", "&lt;") if line.startswith("|") else line for line in lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return MARKER.sub(lambda m: render(m.group(1)), markdown)
