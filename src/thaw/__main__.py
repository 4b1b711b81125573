"""``python -m thaw`` (also what ``torchrun -m thaw`` runs)."""

from __future__ import annotations

import sys

from thaw.cli import main

if __name__ == "__main__":
    sys.exit(main())
