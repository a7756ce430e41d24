"""`python -m evalgate …`: the `evalgate` command without installing the package (the GPU host)."""

from evalgate.cli import main

main()
