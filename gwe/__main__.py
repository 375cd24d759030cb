"""``python -m gwe`` runs the gwe CLI."""
from .cli import main

main()
