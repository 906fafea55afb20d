"""Griffe extension: the reST roles of the numpydoc docstrings, as Markdown for mkdocstrings.

The docstrings are written for numpydoc (``:math:`...```, ``.. math::`` blocks,
``:class:`~fastmoments.FlatParams```); mkdocstrings renders docstrings as Markdown, where those
show up verbatim. Before the docstrings are parsed this rewrites, in their text only:

- ``.. math::`` + an indented block -> a ``$$ ... $$`` block (``aligned`` when the block uses
  ``&`` or ``\\``), for pymdownx.arithmatex;
- ``:math:`x``` -> ``$x$``;
- ``:class:`~a.b.C``` (and ``:func:``, ``:meth:``, ``:mod:``, ``:attr:``, ``:data:``,
  ``:exc:``, ``:obj:``) -> a code span, `C` with ``~``, the full name without.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    target = target.strip()
    if "<" in target and target.endswith(">"):  # :class:`title <target>`
        return f"`{target[: target.index('<')].strip()}`"
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _math_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(".. math::"):
            indent = line[: len(line) - len(stripped)]
            body = [stripped[len(".. math::"):].strip()] if stripped[9:].strip() else []
            i += 1
            while i < len(lines) and (not lines[i].strip() or
                                      len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
                body.append(lines[i].strip())
                i += 1
            while body and not body[-1]:
                body.pop()
            while body and not body[0]:
                body.pop(0)
            math = "\n".join(body)
            if "&" in math or "\\\\" in math:
                math = "\\begin{aligned}\n" + math + "\n\\end{aligned}"
            out += [indent + "$$"] + [indent + m for m in math.split("\n")] + [indent + "$$", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    """The reST constructs of a numpydoc docstring rewritten as Markdown."""
    text = _math_blocks(text)
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    return _ROLE.sub(_role, text)


class RstRoles(griffe.Extension):
    """Rewrite every docstring of the loaded package (see the module docstring)."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        docstring = getattr(obj, "docstring", None)
        if docstring is not None and docstring.value:
            docstring.value = rst_to_markdown(docstring.value)
