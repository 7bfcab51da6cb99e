"""`python -m imagegate.cli`: the same as the `imagegate` command."""

from imagegate.cli.main import main

main()
