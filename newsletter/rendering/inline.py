"""CSS inlining with premailer: the one slow step, run once per campaign.

Mail clients ignore or strip ``<style>`` (Gmail in many views, Outlook partly), so every rule
is copied into ``style`` attributes. What cannot be inlined (the phone media query) stays in a
small ``<style>`` block; the classes that query needs are the only classes kept.
"""

from __future__ import annotations

import logging
import re

from lxml import etree
from premailer import Premailer

#: Classes the phone media query in ``base.html`` targets; every other class is dropped once its
#: rules are inlined, so no styling depends on a class except the media query.
MEDIA_QUERY_CLASSES = frozenset({"m-outer", "m-pad", "m-h1", "m-btn"})

# The serialized document must stay under 998 bytes a line (RFC 5322): then a MIME builder can
# send the part as 8bit instead of inflating it by a third (base64) or three times (quoted-
# printable of UTF-8 Chinese). Lines are broken only between attributes inside a tag.
_ATTRIBUTE = r"""\s+[^\s"'=<>/]+(?:=(?:"[^"]*"|'[^']*'|[^\s"'<>]+))?"""
_TAG = re.compile(rf"<[a-zA-Z][a-zA-Z0-9]*(?:{_ATTRIBUTE})*\s*/?>")


def inline_css(html: str) -> str:
    """Return ``html`` with the CSS of its ``<style>`` blocks inlined into ``style`` attributes.

    Network access is off (no remote stylesheets), validation is off (mail CSS uses properties
    like ``mso-hide`` that cssutils does not know), and ``!important`` is kept because the
    media-query rules must beat the inlined styles.
    """
    parser = etree.HTMLParser(remove_blank_text=False)
    tree = etree.fromstring(html.strip(), parser).getroottree()
    premailer = Premailer(
        allow_network=False,
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
        keep_style_tags=False,  # keep only what cannot be inlined: the media query
        strip_important=False,  # premailer adds !important to media-query rules; keep it
        remove_classes=False,  # done below, sparing the media-query classes
        align_floating_images=False,  # no floats in these templates
        # Widths come from the templates' own attributes (600 for Outlook); a CSS width:100%
        # must not overwrite them.
        disable_basic_attributes=["width", "height"],
    )
    premailer.transform(tree.getroot())  # given an element, premailer edits the tree in place
    for element in tree.iter():
        classes = element.get("class")
        if classes is None:
            continue
        kept = [name for name in classes.split() if name in MEDIA_QUERY_CLASSES]
        if kept:
            element.set("class", " ".join(kept))
        else:
            del element.attrib["class"]
    out: bytes = etree.tostring(tree, method="html", encoding="utf-8", pretty_print=False)
    return _short_lines(out.decode("utf-8"))


def _short_lines(html: str) -> str:
    """Put each attribute of every tag on its own line, so no line grows long from styles.

    Whitespace between attributes is insignificant, so this never changes what is displayed,
    and a newline costs the same byte as the space it replaces. Text is never touched (a
    newline between two Chinese characters may show as a space). It is applied to every tag,
    not only to long lines, so that the result never depends on the length of a value: the
    personalised and the fully rendered invitation must stay byte-equal.
    """
    return _TAG.sub(_break_tag, html)


def _break_tag(match: re.Match[str]) -> str:
    # Scanning attribute by attribute (quoted values consumed whole) so a space inside a value
    # is never taken for a gap between attributes.
    tag = match.group(0)
    name_end = re.match(r"<[a-zA-Z0-9]+", tag)
    assert name_end is not None, "_TAG only matches tags that start with a name"
    head, rest = tag[: name_end.end()], tag[name_end.end() :]
    return head + re.sub(_ATTRIBUTE, lambda m: "\n" + m.group(0).lstrip(), rest)
