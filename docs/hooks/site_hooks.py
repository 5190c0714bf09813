"""MkDocs hooks: links to repository files outside docs/, and ``<x, y>`` as text.

Links. The pages are read in the repository too, where a link such as
``[plain_loop.py](../examples/plain_loop.py)`` opens the file; on the site such a file
is not a page, and MkDocs reports the link as not found. Silencing that class of warning
(``validation.links.not_found: info``) would also silence links that are really broken,
so this hook checks each link that leaves docs/ against the repository instead: the file
must exist (and a Markdown file must have the heading an ``#anchor`` names), otherwise the
build warns and ``--strict`` fails. A link that checks out is rendered as its text with
the repository path in code, since the site has no copy of the file to link to.

Angle brackets. The pages and docstrings write inner products as ``<x_t - x*, v_t>``.
Python-Markdown's inline HTML pattern takes that for a tag and passes it to the browser,
which drops it: the formula vanishes from the page without a warning. CommonMark (and
GitHub, where the pages are also read) allows only well-formed tags, so the ``StrictHtml``
extension replaces the pattern with CommonMark's tag grammar: ``<details>`` or ``<br/>``
are still HTML, and anything else is text. It is added to the Markdown extensions before
mkdocstrings copies them, so docstrings get it too.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from markdown import Extension, Markdown
from markdown.extensions.toc import slugify
from markdown.inlinepatterns import HtmlInlineProcessor
from mkdocs.plugins import event_priority

log = logging.getLogger("mkdocs.hooks.site_hooks")

_FENCE = r"^[ \t]*(?P<fence>```|~~~).*?^[ \t]*(?P=fence)[ \t]*$"
_CODE = re.compile(_FENCE + r"|(?P<ticks>`+).+?(?P=ticks)", re.M | re.S)
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def _anchors(path: Path) -> set[str]:
    text = re.sub(_FENCE, "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slugify(h, "-") for h in _HEADING.findall(text)}


def _rewrite(text: str, target: str, page_dir: Path, docs_dir: Path, root: Path,
             src: str) -> str | None:
    """The replacement of link ``[text](target)``, or None to leave it to MkDocs."""
    if re.match(r"^[a-zA-Z][\w+.-]*:", target) or target.startswith(("#", "/")):
        return None
    path, _, anchor = target.partition("#")
    # lexical, not resolve(): a symlinked file is where the link says it is
    resolved = Path(os.path.normpath(page_dir / path))
    if resolved.is_relative_to(docs_dir):
        return None
    if not resolved.is_relative_to(root):
        log.warning("%s: link '%s' points outside the repository", src, target)
        return None
    rel = resolved.relative_to(root).as_posix()
    if not resolved.exists():
        log.warning("%s: link '%s': no file %s in the repository", src, target, rel)
        return None
    if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
        log.warning("%s: link '%s': %s has no heading '#%s'", src, target, rel, anchor)
    shown = rel + (f"#{anchor}" if anchor else "")
    if text.strip("`") in (rel, shown):
        return f"`{shown}`"
    return f"{text} (`{shown}`)"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs_dir = Path(os.path.abspath(config["docs_dir"]))
    root = Path(os.path.abspath(config["config_file_path"])).parent
    page_dir = (docs_dir / page.file.src_path).parent
    src = page.file.src_path

    def links(chunk: str) -> str:
        def one(m: re.Match[str]) -> str:
            new = _rewrite(m.group(1), m.group(2), page_dir, docs_dir, root, src)
            return m.group(0) if new is None else new
        return _LINK.sub(one, chunk)

    # links inside code blocks and code spans are text, not links
    out, pos = [], 0
    for m in _CODE.finditer(markdown):
        out.append(links(markdown[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(links(markdown[pos:]))
    return "".join(out)


# CommonMark 0.31, "Raw HTML": an open tag, a closing tag, a comment, a processing
# instruction, a declaration or CDATA
_ATTRIBUTE = r"""\s+[A-Za-z_:][A-Za-z0-9_.:-]*(?:\s*=\s*(?:[^\s"'=<>`]+|'[^']*'|"[^"]*"))?"""
_STRICT_HTML = (
    rf"(<(?:[A-Za-z][A-Za-z0-9-]*(?:{_ATTRIBUTE})*\s*/?"
    r"|/[A-Za-z][A-Za-z0-9-]*\s*"
    r"|!--(?:(?!<!--|-->).)*--"
    r"|[?](?:(?!<[?]|[?]>).)*[?]"
    r"|![A-Za-z][^>]*"
    r"|!\[CDATA\[(?:(?!<!\[CDATA\[|\]\]>).)*\]\]"
    r")>)"
)


class StrictHtml(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        md.inlinePatterns.register(HtmlInlineProcessor(_STRICT_HTML, md), "html", 90)


@event_priority(100)  # before mkdocstrings reads the extensions
def on_config(config: Any) -> None:
    config.markdown_extensions.append(StrictHtml())
