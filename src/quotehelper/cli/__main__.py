"""`python -m quotehelper.cli ...` (used to run the service as a child process)."""

from quotehelper.cli import main

main()
