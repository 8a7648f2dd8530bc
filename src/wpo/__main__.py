"""`python -m wpo` (and `torchrun -m wpo`) run the CLI."""

from wpo.cli import main

main()
