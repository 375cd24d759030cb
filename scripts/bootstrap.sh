# Sourced by scripts/demo and scripts/test: a virtualenv in .venv with this checkout installed.
# Set EXTRAS (e.g. "[test]") before sourcing to install pip extras.
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        echo "need root (or sudo) to run: $*" >&2; return 1; fi
}
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "please install with your package manager: $*" >&2; return 1
    fi
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
VENV=${GWE_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        apt_install python3-venv
        python3 -m venv "$VENV"
    fi
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${EXTRAS:-}"
