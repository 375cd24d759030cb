"""``python -m murano_local`` runs the ``murano-local`` CLI."""
from .cli import main

main(prog_name="murano-local")
