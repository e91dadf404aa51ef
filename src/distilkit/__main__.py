from __future__ import annotations

import sys

from distilkit.cli import main

sys.exit(main())
