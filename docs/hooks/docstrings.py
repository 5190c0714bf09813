"""Griffe extension: what the docstrings write for Sphinx or for doctest, as Markdown.

The docstrings are Google style and keep their doctests (run by pytest
``--doctest-modules``) in the text rather than in an ``Examples:`` section. Left as they
are, Markdown reads ``>>>`` as three nested block quotes and a doctest's output such as
``[1.0, 2.0]`` as a reference link (a missing cross-reference under ``--strict``). This
extension fences each run of doctest lines, up to the next blank line, as ``pycon``
before the docstring is parsed. Sphinx roles (``:func:`gamma_hat` ``) become
cross-references to the object they name, resolved in the docstring's scope, so that a
role naming something the reference does not document fails the strict build; a builtin
or another package's name (``:class:`ValueError` ``) becomes code. The source is
unchanged.
"""

from __future__ import annotations

import builtins
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):`~?([\w.]+)`")


def fence_doctests(text: str) -> str:
    out: list[str] = []
    fenced = doctest = False
    indent = ""
    for line in text.splitlines():
        stripped = line.lstrip()
        if doctest and not stripped:
            out.append(indent + "```")
            doctest = False
        if not doctest and stripped.startswith(("```", "~~~")):
            fenced = not fenced
        elif not doctest and not fenced and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(indent + "```pycon")
            doctest = True
        out.append(line)
    if doctest:
        out.append(indent + "```")
    return "\n".join(out)


def _role(obj: griffe.Object, loader: griffe.GriffeLoader, name: str) -> str:
    """Markdown for a Sphinx role naming ``name`` in ``obj``'s docstring."""
    if name in vars(builtins):
        return f"`{name}`"
    try:
        path = name if "." in name else obj.resolve(name)
    except griffe.NameResolutionError:
        return f"[`{name}`][{name}]"  # a stale name: autorefs reports it
    if path.split(".")[0] not in loader.modules_collection.members:
        return f"`{name}`"  # another package's name: not in this reference
    try:
        found = loader.modules_collection[path]
        path = found.final_target.path if found.is_alias else found.path
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        pass  # autorefs reports the missing target
    return f"[`{name}`][{path}]"


class SphinxAndDoctest(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader,
                  **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        text = obj.docstring.value
        if ">>>" in text:
            text = fence_doctests(text)
        obj.docstring.value = _ROLE.sub(lambda m: _role(obj, loader, m.group(1)), text)
