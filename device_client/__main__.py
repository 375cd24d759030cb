"""``python -m device_client`` runs the ``gdc`` CLI."""
from .cli import main

main(prog_name="gdc")
