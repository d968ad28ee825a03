"""The web app: RSVP and unsubscribe pages reached through signed links, the .ics files."""

from newsletter.web.app import create_app

__all__ = ["create_app"]
