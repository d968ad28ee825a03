"""Where the files the program reads at run time are: the mail and page templates, the demo's
examples. The one place that says so.

The repository keeps them at its root (``templates/``, ``examples/``), where their owners edit
them. The wheel carries them inside the package: pyproject.toml maps those folders to
``newsletter/templates`` and ``newsletter/examples`` at build time, so an installed package
finds them wherever it was installed and whatever the working directory. The editable install
used for development imports the package from the checkout, where the folders still sit beside
it; nothing is copied, so an edited template is what the next render reads.
"""

from __future__ import annotations

from pathlib import Path

import newsletter

_PACKAGE = Path(newsletter.__file__).resolve().parent


def shipped_folder(name: str) -> Path:
    """The folder ``name`` as the wheel ships it (inside the package), or, when the package
    is imported from a source checkout, the repository's own folder of that name."""
    inside = _PACKAGE / name
    return inside if inside.is_dir() else _PACKAGE.parent / name


#: The Jinja templates: ``email/`` for the mails, ``web/`` for the pages.
TEMPLATES_DIR = shipped_folder("templates")

#: The demo's sample session records (``sessions/``) and ``subscribers.csv``.
EXAMPLES_DIR = shipped_folder("examples")
