"""Salon invitations: session records to personalised mails, signed RSVP links, organizer views."""

__version__ = "0.1.0"
