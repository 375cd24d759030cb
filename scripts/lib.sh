# Shell functions shared by scripts/bootstrap.sh, scripts/install-gateway and scripts/release.
# POSIX sh; source it, then call the functions.

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

# make_venv DIR PYTHON [VENV_OPTION...]: a virtualenv in DIR unless one is there; python3-venv via apt if missing.
make_venv() {
    _dir=$1 _python=$2
    shift 2
    [ -x "$_dir/bin/python" ] && return 0
    rm -rf "$_dir"
    if ! "$_python" -m venv "$@" "$_dir" >/dev/null 2>&1; then
        rm -rf "$_dir"
        apt_install python3-venv
        "$_python" -m venv "$@" "$_dir"
    fi
}

# build_wheel SRC OUTDIR PYTHON: build the suite's wheel (no dependencies) from a copy of the source
# tree, so that a stale build/ in SRC never leaks into it; prints the wheel's path.
# Offline (no build isolation) when PYTHON already has setuptools and wheel.
build_wheel() {
    _src=$1 _out=$2 _python=$3
    _copy=$(mktemp -d)
    tar -C "$_src" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$_copy" -xf -
    set -- --no-deps --quiet --disable-pip-version-check
    if "$_python" -c "import setuptools, wheel" >/dev/null 2>&1; then
        set -- "$@" --no-build-isolation
    fi
    mkdir -p "$_out"
    rm -f "$_out"/gateway_engine-*.whl
    if ! "$_python" -m pip wheel "$@" --wheel-dir "$_out" "$_copy" >&2; then
        rm -rf "$_copy"
        return 1
    fi
    rm -rf "$_copy"
    ls "$_out"/gateway_engine-*.whl
}
