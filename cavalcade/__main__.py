"""``python -m cavalcade``: the same as the ``cavalcade`` command."""

from cavalcade.cli import main

main()
