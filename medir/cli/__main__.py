"""``python -m medir.cli``: the same as the ``medir`` command."""

from medir.cli import main

main()
