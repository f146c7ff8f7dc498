"""``python -m qir.cli``: the same as ``qirc``."""

from qir.cli.main import main

main()
