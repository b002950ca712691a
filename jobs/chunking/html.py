"""HTML to blocks: the page's main content only, its structure kept.

1. *Main content.* The root is the page's ``<main>``, its ``role="main"`` element or its
   only ``<article>``; without one, the body. Outside the root nothing is read: that is
   where generated documentation keeps its navigation bars, sidebars and footers.
2. *Boilerplate inside the root is dropped by rule*: elements that are navigation by tag
   (nav, form, button, ...), by ARIA role (navigation, search, banner, contentinfo) or by a
   class or id word (nav*, breadcrumb, toc, toctree, sidebar, related, pagination,
   headerlink, cookie, ...), and scripts, styles and the like. A page without any of these
   loses nothing.
3. *Structure.* Headings keep their level; ``<pre>`` is a code block, kept exactly; list
   items, definition terms and descriptions, and paragraphs are blocks; a table is one
   block with a row per line and ``|`` between cells; an admonition's title ("Note")
   labels its first paragraph instead of standing as a heading.

The walk uses an explicit stack and never edits the tree, so its time is linear in the
page's size however deep it nests (up to ``limits.HTML_DEPTH``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from bs4 import BeautifulSoup
from bs4.element import NavigableString, PageElement, Tag

from jobs.chunking.blocks import RawBlock
from streamrag.limits import HTML_DEPTH, exceeded

_DROP_TAGS = frozenset({
    "script", "style", "noscript", "template", "head", "svg", "nav", "form", "button",
    "select", "input", "textarea", "iframe", "object", "canvas", "dialog",
})  # fmt: skip
_DROP_ROLES = frozenset({"navigation", "search", "banner", "contentinfo", "menu", "menubar"})
# Words of class or id values that mark boilerplate ("navheader" starts with "nav").
_DROP_WORDS = frozenset({
    "breadcrumb", "breadcrumbs", "toc", "toctree", "contents", "sidebar", "sphinxsidebar",
    "related", "pagination", "pager", "headerlink", "cookie", "cookies", "consent",
    "skip", "share", "social", "footer", "menu", "prev", "next", "navbar", "searchbox",
})  # fmt: skip
_DROP_PREFIXES = ("nav", "toctree", "sidebar")
_WORD = re.compile(r"[a-z]+")
_WHITESPACE = re.compile(r"\s+")
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_BLOCK_TAGS = frozenset({
    "p", "div", "section", "article", "header", "footer", "aside", "main", "blockquote",
    "ul", "ol", "li", "dl", "dt", "dd", "figure", "figcaption", "fieldset", "details",
    "summary", "address", "hr", "table", "caption",
})  # fmt: skip
_CELLS = frozenset({"td", "th"})
# Inline elements: their class words do not make them boilerplate (a "toc-backref" link in
# a heading is the heading's text).
_INLINE = frozenset(
    {
        "a",
        "span",
        "code",
        "em",
        "strong",
        "b",
        "i",
        "abbr",
        "cite",
        "kbd",
        "samp",
        "var",
        "sub",
        "sup",
        "small",
        "mark",
        "q",
        "time",
    }
)


def html_blocks(html: str) -> list[RawBlock]:
    """The blocks of a page's main content (see the module doc). Should the class and id
    rules leave no text at all (a page wrapped in ``<div id="contents">``, say), the page
    is read again without them: boilerplate kept rather than the page lost."""
    soup = BeautifulSoup(html, "html.parser")
    root = main_root(soup)
    blocks = list(_Walker(by_words=True).walk(root))
    if not any(b.kind != "heading" for b in blocks):
        blocks = list(_Walker(by_words=False).walk(root))
    return blocks


def main_root(soup: BeautifulSoup) -> Tag:
    """The element that holds the page's main content."""
    main = soup.find("main") or soup.find(role="main")
    if isinstance(main, Tag):
        return main
    articles = soup.find_all("article")
    if len(articles) == 1 and isinstance(articles[0], Tag):
        return articles[0]
    body = soup.find("body")
    return body if isinstance(body, Tag) else soup


def is_boilerplate(tag: Tag, by_words: bool = True) -> bool:
    """Navigation, tables of contents and the like (see the module doc)."""
    if tag.name in _DROP_TAGS:
        return True
    role = tag.get("role")
    if isinstance(role, str) and role.lower() in _DROP_ROLES:
        return True
    if not by_words:
        return False
    if tag.name in _INLINE:  # a link or span is content, but for a heading's permalink
        return "headerlink" in _attr_values(tag)
    words = [w for value in _attr_values(tag) for w in _WORD.findall(value.lower())]
    return any(w in _DROP_WORDS or w.startswith(_DROP_PREFIXES) for w in words)


def _attr_values(tag: Tag) -> list[str]:
    classes = tag.get("class")
    values = [str(c) for c in classes] if isinstance(classes, list) else [str(classes or "")]
    ident = tag.get("id")
    return [*values, ident] if isinstance(ident, str) else values


class _Walker:
    """Walks the tree once, depth first, and yields a block at every block boundary."""

    def __init__(self, by_words: bool) -> None:
        self._by_words = by_words
        self._text: list[str] = []
        self._label = ""  # an admonition's title, for its next paragraph

    def walk(self, root: Tag) -> Iterator[RawBlock]:
        stack: list[tuple[PageElement, int, bool]] = [(root, 0, False)]
        while stack:
            node, depth, closing = stack.pop()
            if closing:
                yield from self._close(node)
            elif type(node) is NavigableString:  # not a Comment, CData, Doctype, ...
                # In HTML a run of white space, line breaks included, is one space.
                self._text.append(_WHITESPACE.sub(" ", str(node)))
            elif isinstance(node, Tag):
                if depth > HTML_DEPTH.value:
                    raise exceeded(HTML_DEPTH, f"HTML nests more than {HTML_DEPTH.value} deep")
                if is_boilerplate(node, self._by_words):
                    continue
                yield from self._open(node, depth, stack)
        yield from self._flush()

    def _open(
        self, tag: Tag, depth: int, stack: list[tuple[PageElement, int, bool]]
    ) -> Iterator[RawBlock]:
        level = _HEADINGS.get(tag.name)
        if level:
            yield from self._flush()
            yield RawBlock("heading", _plain_text(tag), level=level)
            return
        if tag.name == "pre":
            yield from self._flush()
            yield RawBlock("code", "".join(_strings(tag)))
            return
        if "admonition-title" in (tag.get("class") or []):
            yield from self._flush()
            self._label = " ".join(_plain_text(tag).split())
            return
        if tag.name == "br":
            self._text.append("\n")
            return
        if tag.name == "tr":
            cells = [" ".join(_plain_text(c).split()) for c in tag.find_all(_CELLS)]
            self._text.append(" | ".join(c for c in cells if c) + "\n")
            return
        if tag.name in _BLOCK_TAGS:
            yield from self._flush()
        stack.append((tag, depth, True))
        stack.extend((child, depth + 1, False) for child in reversed(tag.contents))

    def _close(self, node: PageElement) -> Iterator[RawBlock]:
        if getattr(node, "name", None) in _BLOCK_TAGS:
            yield from self._flush()

    def _flush(self) -> Iterator[RawBlock]:
        text = "".join(self._text)
        self._text = []
        lines = [" ".join(line.split()) for line in text.split("\n")]
        text = "\n".join(line for line in lines if line)
        if text:
            if self._label:
                text, self._label = f"{self._label}: {text}", ""
            yield RawBlock("text", text)


def _strings(tag: Tag) -> Iterator[str]:
    """The plain strings inside ``tag``, in order, without scripts, styles and the like."""
    for s in tag.descendants:
        if type(s) is NavigableString and not any(
            p.name in _DROP_TAGS for p in s.parents if p is not tag
        ):
            yield str(s)


def _plain_text(tag: Tag) -> str:
    """A heading's or cell's text, without boilerplate inside it (a ¶ link, say)."""
    return "".join(
        str(s)
        for s in tag.descendants
        if type(s) is NavigableString
        and not any(isinstance(p, Tag) and is_boilerplate(p) for p in s.parents if p is not tag)
    )
