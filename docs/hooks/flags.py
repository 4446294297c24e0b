"""MkDocs hook: every ``<!-- flags: MODULE -->`` line of a page becomes the flag reference of that command line,
rendered from ``MODULE.build_parser()`` when the site is built, so the pages list exactly what ``--help`` lists."""
from __future__ import annotations

import argparse
import importlib
import re

MARKER = re.compile(r"^<!-- flags: ([\w.]+) -->$", re.M)


def _tables(parser: argparse.ArgumentParser) -> str:
    """One table per argument group (flag, what follows it, help), for a tree without ``mt_dnn.flags``."""
    out = []
    for group in parser._action_groups:
        rows = [a for a in group._group_actions if a.option_strings and a.help != argparse.SUPPRESS
                and not isinstance(a, argparse._HelpAction)]
        if rows:
            out += [f"### {group.title}", "", "| flag | description |", "| --- | --- |"]
            out += [f"| {' '.join(f'`{o}`' for o in a.option_strings)}"
                    f"{'' if a.nargs == 0 else ' `' + (a.metavar or a.dest.upper()) + '`'} | "
                    f"{(a.help or '').replace('|', '&#124;')} |" for a in rows]
            out.append("")
    return "\n".join(out)


def render(module: str) -> str:
    """The flag tables of ``module``'s parser; ``<`` in a table cell (``runs/<tasks>``) is text, not HTML."""
    parser = importlib.import_module(module).build_parser()
    try:
        from mt_dnn.flags import markdown
    except ImportError:
        markdown = _tables
    lines = markdown(parser).splitlines()
    return "\n".join(line.replace("<", "&lt;") if line.startswith("|") else line for line in lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return MARKER.sub(lambda m: render(m.group(1)), markdown)
