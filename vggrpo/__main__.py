"""``python -m vggrpo``: the ``vggrpo`` command."""

from .cli import main

raise SystemExit(main())
