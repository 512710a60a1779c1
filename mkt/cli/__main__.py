"""``python -m mkt.cli ...`` == ``mkt ...``."""

from . import main

main()
