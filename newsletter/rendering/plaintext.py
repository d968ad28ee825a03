"""Markdown rendered as plain text, for the text part of a mail.

The text part is read as text, so it shows what the Markdown *means* rather than its marks:
links as ``text <url>``, no ``**`` or ``_``, list items as lines with a bullet (or their
number), headings as plain lines, images as ``alt：url`` (a text mail cannot show them), code
indented. It walks the token stream of the same markdown-it parser that makes the HTML part,
so both parts read one parse of the record: no regular expression guesses at the syntax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.token import Token

BULLET = "• "
RULE = "————"


@dataclass
class _Frame:
    """One level of nesting: a list item (its marker, shown on its first line) or a quote."""

    marker: str
    pending: bool = True
    quote: bool = False


class _Writer:
    """Collects output lines, each with the prefixes of the items and quotes it is inside."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.frames: list[_Frame] = []

    def _prefix(self) -> str:
        parts = []
        for frame in self.frames:
            if frame.quote:
                parts.append(frame.marker)
            elif frame.pending:
                parts.append(frame.marker)
                frame.pending = False
            else:
                parts.append(" " * len(frame.marker))
        return "".join(parts)

    def text(self, text: str, indent: str = "") -> None:
        for line in text.split("\n"):
            self.lines.append((self._prefix() + indent + line).rstrip())

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def result(self) -> str:
        return "\n".join(self.lines).strip("\n")


def markdown_plain(parser: MarkdownIt, source: str | None) -> str:
    """``source`` (Markdown) as plain text, parsed by ``parser`` (see the module docstring)."""
    if not source:
        return ""
    writer = _Writer()
    lists: list[tuple[bool, int]] = []  # (ordered, next number) per open list
    tokens = parser.parse(source)
    for token in tokens:
        kind = token.type
        if kind in ("bullet_list_open", "ordered_list_open"):
            if not lists:
                writer.blank()
            start = token.attrGet("start")
            lists.append((kind == "ordered_list_open", int(start) if start else 1))
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
            if not lists:
                writer.blank()
        elif kind == "list_item_open":
            ordered, number = lists[-1]
            marker = f"{number}. " if ordered else BULLET
            lists[-1] = (ordered, number + 1)
            writer.frames.append(_Frame(marker))
        elif kind == "list_item_close":
            writer.frames.pop()
        elif kind == "blockquote_open":
            writer.blank()
            writer.frames.append(_Frame("> ", quote=True))
        elif kind == "blockquote_close":
            writer.frames.pop()
            writer.blank()
        elif kind in ("paragraph_open", "heading_open"):
            if not token.hidden:  # hidden: a paragraph of a tight list item, no blank line
                writer.blank()
        elif kind == "heading_close":
            writer.blank()
        elif kind == "inline":
            writer.text(inline_plain(parser, token.children or []))
        elif kind in ("fence", "code_block"):
            writer.blank()
            writer.text(token.content.rstrip("\n"), indent="    ")
            writer.blank()
        elif kind == "hr":
            writer.blank()
            writer.text(RULE)
            writer.blank()
        elif kind == "html_block":  # only when a parser allows raw HTML: shown as written
            writer.text(token.content.rstrip("\n"))
    return writer.result()


def inline_plain(parser: MarkdownIt, children: Sequence[Token]) -> str:
    """One paragraph's inline tokens as text: emphasis dropped, links as ``text <url>``.

    URLs are shown as written (``parser.normalizeLinkText`` undoes the percent-encoding that
    the HTML part needs), so ``联系人.png`` reads as such.
    """
    parts: list[str] = []
    links: list[tuple[str, str, int]] = []  # (href, markup, where its text starts)
    for token in children:
        kind = token.type
        if kind in ("text", "code_inline", "html_inline"):
            parts.append(token.content)
        elif kind in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif kind == "link_open":
            href = parser.normalizeLinkText(str(token.attrGet("href") or ""))
            links.append((href, token.markup, len(parts)))
        elif kind == "link_close" and links:
            href, markup, start = links.pop()
            label = "".join(parts[start:]).strip()
            bare = href.removeprefix("mailto:")
            same = label.rstrip("/") in (href.rstrip("/"), bare.rstrip("/"))
            if markup in ("linkify", "autolink") or not label or same:
                parts[start:] = [label or bare]  # the URL is the text: say it once
            else:
                parts.append(f" <{href}>")
        elif kind == "image":
            alt = token.content.strip()
            src = parser.normalizeLinkText(str(token.attrGet("src") or ""))
            parts.append(f"{alt}：{src}" if alt else src)
        # strong/em/s open and close: the marks are dropped, their text stays
    return "".join(parts)
