# Sourced by scripts/demo and scripts/test: a virtualenv in .venv with this checkout installed.
# Set EXTRAS (e.g. "[test]") before sourcing to install pip extras.
. scripts/lib.sh
VENV=${GWE_VENV:-.venv}
make_venv "$VENV" python3
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${EXTRAS:-}"
