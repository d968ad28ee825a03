"""The Jinja environment of the mail templates and the filters they use.

Dates are shown the way the club's own invitations show them (``12月05日（周四）12:30–14:30``,
archive dates ``19.12.05``), always in the session's time zone, never the server's.
Markdown fields (intro, notes, about, highlight text) become HTML through markdown-it with raw
HTML switched off, so a record can hold ``<script>`` and it arrives as text.
"""

from __future__ import annotations

import importlib.util
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from markupsafe import Markup, escape

from newsletter.rendering.plaintext import markdown_plain

# Re-exported (``newsletter.rendering.TEMPLATES_DIR``); newsletter.resources says where it is.
from newsletter.resources import TEMPLATES_DIR as TEMPLATES_DIR

#: The widest an image may be drawn: the 600 px column minus its padding. Outlook ignores
#: ``max-width``, so images get a ``width`` attribute when their natural width is known.
CONTENT_WIDTH = 552

_WEEKDAYS = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")


# --- dates and times ---------------------------------------------------------------------------


def local(value: datetime, tz: ZoneInfo) -> datetime:
    """``value`` as wall-clock time in ``tz`` (records carry offsets; show the session's zone)."""
    return value.astimezone(tz)


def cn_date(value: datetime, tz: ZoneInfo) -> str:
    """``12月05日（周四）``: month and day zero-padded, as in the club's invitations."""
    moment = local(value, tz)
    return f"{moment.month:02d}月{moment.day:02d}日（{_WEEKDAYS[moment.weekday()]}）"


def hm(value: datetime, tz: ZoneInfo) -> str:
    """``12:30``, 24-hour clock."""
    return f"{local(value, tz):%H:%M}"


def hm_range(start: datetime, end: datetime, tz: ZoneInfo) -> str:
    """``12:30–13:15`` (en dash), for a talk's slot within its session's day."""
    return f"{hm(start, tz)}–{hm(end, tz)}"


def cn_datetime_range(start: datetime, end: datetime, tz: ZoneInfo) -> str:
    """``12月05日（周四）12:30–14:30``; the end date is repeated only when it differs."""
    if local(start, tz).date() == local(end, tz).date():
        return f"{cn_date(start, tz)}{hm_range(start, end, tz)}"
    return f"{cn_date(start, tz)}{hm(start, tz)}–{cn_date(end, tz)}{hm(end, tz)}"


def cn_deadline(value: datetime, tz: ZoneInfo) -> str:
    """``12月05日 10:00``, the form used for registration deadlines."""
    moment = local(value, tz)
    return f"{moment.month:02d}月{moment.day:02d}日 {moment:%H:%M}"


def archive_date(value: date) -> str:
    """``19.12.05``: the archive table's ``YY.MM.DD`` (the seeds mix ``19.3.16``/``20.03.01``;
    one zero-padded form keeps the column aligned)."""
    return f"{value:%y.%m.%d}"


# --- Markdown ----------------------------------------------------------------------------------

_HAS_LINKIFY = importlib.util.find_spec("linkify_it") is not None


def _render_image(
    self: RendererHTML, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """An e-mail-safe ``<img>``: alt text, no border, and a ``width`` attribute for Outlook when
    the URL says how wide the picture is (Yuque-style ``#…&width=1114`` fragments)."""
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = self.renderInlineAsText(token.children or [], options, env)
    attrs = f'src="{escape(src)}" alt="{escape(alt)}" border="0"'
    width = _declared_width(src)
    if width is not None:
        attrs += f' width="{min(width, CONTENT_WIDTH)}"'
    return f"<img {attrs}>"


def _declared_width(url: str) -> int | None:
    fragment = urlsplit(url).fragment
    values = parse_qs(fragment).get("width") if fragment else None
    if values and values[0].isdigit():
        return int(values[0])
    return None


def _markdown() -> MarkdownIt:
    # "html": False makes raw HTML in a record text, not markup; markdown-it also refuses
    # javascript: and similar link targets on its own.
    parser = MarkdownIt("commonmark", {"html": False, "linkify": _HAS_LINKIFY})
    if _HAS_LINKIFY:
        parser.enable("linkify")
    parser.add_render_rule("image", _render_image)
    return parser


_MD = _markdown()


def markdown_html(source: str | None) -> Markup:
    """Markdown (block: paragraphs, lists, images) to safe HTML."""
    if not source:
        return Markup("")
    return Markup(_MD.render(source).strip())


def markdown_inline(source: str | None) -> Markup:
    """Markdown of one line (emphasis, links) to safe HTML, without a wrapping ``<p>``."""
    if not source:
        return Markup("")
    return Markup(_MD.renderInline(source).strip())


def markdown_text(source: str | None) -> str:
    """Markdown for the plain-text part, as text: links as ``text <url>``, no emphasis marks,
    list items on lines with a bullet, headings as plain lines, images as ``alt：URL``
    (:mod:`newsletter.rendering.plaintext`, from the same parse as the HTML part)."""
    return markdown_plain(_MD, source.strip() if source else None)


# --- the environment ---------------------------------------------------------------------------

_FILTERS: dict[str, Any] = {
    "cn_date": cn_date,
    "hm": hm,
    "hm_range": hm_range,
    "cn_datetime_range": cn_datetime_range,
    "cn_deadline": cn_deadline,
    "archive_date": archive_date,
    "markdown": markdown_html,
    "markdown_inline": markdown_inline,
    "markdown_text": markdown_text,
}


@lru_cache(maxsize=4)
def get_environment(templates_dir: Path = TEMPLATES_DIR) -> Environment:
    """The shared Jinja environment: autoescape for ``.html``, undefined names are errors."""
    environment = Environment(
        loader=FileSystemLoader(templates_dir),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,  # templates do not change under a running worker
    )
    environment.filters.update(_FILTERS)
    return environment


def template_source(name: str, templates_dir: Path = TEMPLATES_DIR) -> str:
    """The raw text of a template file (``email/_club.md``), not rendered by Jinja."""
    return (templates_dir / name).read_text(encoding="utf-8")
