#!/bin/sh
# install.sh of Gateway Engine's own OTAU packages (gwe.v<version>, gmq.v<version>).
#
# otau runs it in the unpacked package, $GWE_APP_DIR = $GWE_HOME/var/lib/gwe/apps/<name>/<version>.
# Each version gets its own virtualenv in $GWE_APP_DIR/venv holding only this package's wheel;
# the dependencies come from the base virtualenv (the one `scripts/install-gateway` made),
# made visible by a .pth file. The base is never modified, so rolling back to the previous
# program file really runs the previous code.
set -eu
: "${GWE_APP_DIR:?run by otau (gwe -I or an OTAU), which sets GWE_APP_DIR}"
: "${GWE_PYTHON:?run by otau, which sets GWE_PYTHON}"
unset PYTHONPATH PYTHONHOME  # this version's code must come from its own virtualenv

PTH=gateway_engine_base.pth
VENV=$GWE_APP_DIR/venv

# The base site-packages: those of the interpreter gwe runs in, or, when that gwe is itself an
# OTAU-installed version, the base its own .pth names (.pth files are not read through a .pth).
BASE_SITE=$("$GWE_PYTHON" -c '
import os, site, sys
dirs = site.getsitepackages()
for d in dirs:
    pth = os.path.join(d, sys.argv[1])
    if os.path.isfile(pth):
        with open(pth) as f:
            sys.stdout.write(f.read())
        break
else:
    print("\n".join(d for d in dirs if os.path.isdir(d)))
' "$PTH")

echo "installing $GWE_APP_NAME $GWE_APP_VERSION into $VENV"
"$GWE_PYTHON" -m venv --without-pip "$VENV"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n' "$BASE_SITE" > "$SITE/$PTH"
echo "dependencies from: $(echo "$BASE_SITE" | tr '\n' ' ')"

set -- ./gateway_engine-*.whl
if [ "$#" != 1 ] || [ ! -f "$1" ]; then
    echo "expected exactly one gateway_engine wheel in the package, found: $*" >&2
    exit 1
fi
# --ignore-installed: the base's own copy of the suite is visible through the .pth and must not
# make pip skip (same version) or try to uninstall it (never touch the base).
"$VENV/bin/python" -m pip install --quiet --no-deps --no-index --ignore-installed \
    --disable-pip-version-check --no-warn-script-location "$1"
"$VENV/bin/python" -c 'import gwe, gmq, otau, device_client, requests, supervisor, psutil, click, yaml, paho.mqtt'
echo "gateway-engine $("$VENV/bin/python" -m gwe --version) installed in $VENV"
