"""`python -m flexcli ...` (and `torchrun ... -m flexcli sample ...`)."""
from flexcli.cli import main

main()
