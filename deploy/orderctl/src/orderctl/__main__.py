"""`python -m orderctl`, the same as the `orderctl` command."""

from orderctl.cli import main

main()
