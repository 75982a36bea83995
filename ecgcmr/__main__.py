"""``python -m ecgcmr`` is the ``ecgcmr`` command."""

from ecgcmr.cli import main

raise SystemExit(main())
