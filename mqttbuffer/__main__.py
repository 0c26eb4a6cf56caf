"""Entry point for ``python -m mqttbuffer``."""

import sys

from mqttbuffer.cli import main

sys.exit(main())
