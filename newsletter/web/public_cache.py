"""HTTP caching of the public pages: validators from the sessions, 304 on a match.

Every public page shows only what session records say, so a page can change only when a
session is imported (its ``updated_at`` moves), deleted, or when a session ends (it moves from
"next" to the archive). The validators are built from exactly those facts
(``public_repo.SiteState``, or one session's row), so a client's conditional GET is answered
304 by one aggregate query, without rendering, and a changed page is never held back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from fastapi import Request
from fastapi.responses import Response

from newsletter import __version__
from newsletter.web.pages import SECURITY_HEADERS

#: How long a browser or proxy may show a public page without asking again: short, because a
#: change notice is a reason to look, and asking again costs a 304.
MAX_AGE_S = 300

#: The methods a public page answers: HEAD too, which link checkers, feed readers and
#: calendar apps use to see whether a page exists or changed without fetching it.
PUBLIC_METHODS = ["GET", "HEAD"]


class Validators:
    """A page's ETag and Last-Modified, from the facts it depends on."""

    def __init__(self, facts: Iterable[object], changed_at: datetime | None) -> None:
        # The version: a deploy that changes a template changes every page.
        digest = hashlib.sha256(repr((__version__, *facts)).encode()).hexdigest()[:32]
        # Weak: the same facts give the same page, not the same bytes (the form token).
        self.etag = f'W/"{digest}"'
        self.changed_at = (changed_at or datetime(2000, 1, 1, tzinfo=UTC)).replace(microsecond=0)

    def headers(self) -> dict[str, str]:
        """The headers a 200 and a 304 both carry."""
        return {
            "ETag": self.etag,
            "Last-Modified": format_datetime(self.changed_at.astimezone(UTC), usegmt=True),
            "Cache-Control": f"public, max-age={MAX_AGE_S}",
        }

    def fresh(self, request: Request) -> bool:
        """Whether the client's copy is current: If-None-Match when sent (it wins, RFC 9110
        13.2.2), else If-Modified-Since. Unparseable dates count as no condition."""
        if_none_match = request.headers.get("if-none-match")
        if if_none_match is not None:
            tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
            return "*" in tags or self.etag.removeprefix("W/") in tags
        since = request.headers.get("if-modified-since")
        if since is None:
            return False
        try:
            moment = parsedate_to_datetime(since)
        except (TypeError, ValueError, IndexError):
            return False
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return self.changed_at <= moment

    def not_modified(self) -> Response:
        """The 304 answer: no body, the validators and the page's other headers."""
        headers = {**SECURITY_HEADERS, **self.headers()}
        return Response(status_code=304, headers=headers)

    def apply(self, response: Response) -> Response:
        """``response`` with the validators and public caching (pages default to no-store)."""
        response.headers.update(self.headers())
        return response
