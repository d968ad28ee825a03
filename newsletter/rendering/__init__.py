"""Mail rendering: the Jinja environment, CSS inlining (premailer lives here only) and the
invitation, compiled once per campaign and personalised per recipient.

Public API::

    Recipient, RenderedInvitation       per-recipient values in, finished parts out
    default_subject(record)             "第 61 期机器学习学术沙龙邀请函：联邦学习的鲁棒性"
    reminder_subject(record, timezone)  "提醒：第 61 期机器学习学术沙龙 · 10月25日（周日）19:30"
    InvitationTemplate.build(...)       once per campaign; .personalise(recipient) per message
                                        (.personalise_utf8: the same, parts as UTF-8 bytes);
                                        template=REMINDER for the reminder campaign mail,
                                        template=CHANGE (+ extra={"changes": ...}) a change notice,
                                        template=FOLLOWUP the follow-up (r.feedback_url)
    render_invitation(...)              the full render of one message (preview, tests)
    render_email_template(name, **ctx)  other mails (waitlist, confirmation)
"""

from newsletter.rendering.environment import TEMPLATES_DIR, get_environment
from newsletter.rendering.inline import inline_css
from newsletter.rendering.invitation import (
    CHANGE,
    FOLLOWUP,
    INVITATION,
    REMINDER,
    Recipient,
    RenderedInvitation,
    change_subject,
    default_subject,
    followup_subject,
    reminder_subject,
    render_email_template,
    render_invitation,
)
from newsletter.rendering.personalise import (
    EncodedInvitation,
    InvitationTemplate,
    RenderingError,
)

__all__ = [
    "CHANGE",
    "FOLLOWUP",
    "INVITATION",
    "REMINDER",
    "TEMPLATES_DIR",
    "EncodedInvitation",
    "InvitationTemplate",
    "Recipient",
    "RenderedInvitation",
    "RenderingError",
    "change_subject",
    "default_subject",
    "followup_subject",
    "get_environment",
    "inline_css",
    "reminder_subject",
    "render_email_template",
    "render_invitation",
]
