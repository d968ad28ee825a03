# It runs in the peer's venv: Django and django-newsletter are not the project's packages.
# mypy: disable-error-code="import-not-found,attr-defined"
"""django-newsletter 1.2 sending our invitation, timed: the peer figure for ``send.py --peer``.

Runs inside its own venv (``benchmarks/peers/.venv``, made by ``send.py --peer``: ``pip install
"django-newsletter==1.2.*"``), never in the project's. A throwaway Django project in a temp
directory (SQLite, the ``newsletter`` app, Django's SMTP e-mail backend pointed at the
benchmark's smtp-sink) gets N subscriptions to one newsletter and one message whose templates
are our invitation: the HTML and text parts of ``newsletter preview`` verbatim, with the
subscriber's name filled in per mail (``{{ subscription.name }}``) as ours does. Then
``Submission.submit_queue()`` — what django-newsletter's ``submit_newsletter`` command and its
cron job run — is timed. django-newsletter renders each mail with Django templates and sends
it with ``EmailMessage.send()``, one SMTP connection per message, one at a time.

Usage: ``python django_newsletter.py --port P --html F --text F --subject S --name NAME --n N``;
prints one JSON line ``{"peer", "version", "n", "seconds", "msgs_per_s"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path

VERBATIM_OPEN, VERBATIM_CLOSE = "{% verbatim %}", "{% endverbatim %}"


def template(body: str, name: str) -> str:
    """``body`` as a Django template: verbatim everywhere but the recipient's name."""
    pieces = body.split(name) if name else [body]
    return "{{ subscription.name }}".join(
        f"{VERBATIM_OPEN}{piece}{VERBATIM_CLOSE}" for piece in pieces
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--html", type=Path, required=True)
    parser.add_argument("--text", type=Path, required=True)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--name", default="", help="the preview recipient's name in the bodies")
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="peer-django-newsletter-"))
    templates = work / "templates" / "newsletter" / "message" / "salon"
    templates.mkdir(parents=True)
    (templates / "message.html").write_text(
        template(args.html.read_text(encoding="utf-8"), args.name), encoding="utf-8"
    )
    (templates / "message.txt").write_text(
        template(args.text.read_text(encoding="utf-8"), args.name), encoding="utf-8"
    )
    (templates / "message_subject.txt").write_text(template(args.subject, ""), encoding="utf-8")
    (work / "peer_urls.py").write_text(
        "from django.urls import include, path\n"
        "urlpatterns = [path('newsletter/', include('newsletter.urls'))]\n"
    )
    sys.path.insert(0, str(work))

    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="peer-benchmark",
        USE_TZ=True,
        SITE_ID=1,
        ROOT_URLCONF="peer_urls",
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(work / "db.sqlite3")}
        },
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sites",
            "django.contrib.sessions",
            "newsletter",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "DIRS": [str(work / "templates")],
                "APP_DIRS": True,
            }
        ],
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=args.port,
        NEWSLETTER_THUMBNAIL="sorl-thumbnail",
        NEWSLETTER_CONFIRM_EMAIL=False,
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django.contrib.sites.models import Site
    from django.core.management import call_command
    from django.utils.timezone import now

    # django-newsletter's package, also called `newsletter`: this runs in the peer's venv.
    from newsletter.models import Message, Newsletter, Submission, Subscription

    call_command("migrate", verbosity=0)
    site = Site.objects.get(id=1)
    site.domain, site.name = "salon.example.org", "salon"
    site.save()
    letter = Newsletter.objects.create(
        title="机器学习学术沙龙",
        slug="salon",
        email="salon@example.org",
        sender="Mo 人工智能俱乐部",
    )
    letter.site.add(site)
    Subscription.objects.bulk_create(
        Subscription(
            newsletter=letter,
            name_field=f"读者 {i}",
            email_field=f"peer{i:07d}@example.org",
            subscribed=True,
        )
        for i in range(args.n)
    )
    message = Message.objects.create(title="invitation", slug="invitation", newsletter=letter)
    submission = Submission.from_message(message)
    submission.prepared = True
    submission.publish_date = now() - timedelta(minutes=1)
    submission.save()

    started = time.perf_counter()
    Submission.submit_queue()
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "peer": "django-newsletter",
                "version": version("django-newsletter"),
                "n": args.n,
                "seconds": round(seconds, 2),
                "msgs_per_s": round(args.n / seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
