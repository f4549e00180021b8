#!/bin/sh
# The Python behind `.venv`, for make: finds one new enough, or says what to install and fails.
#
#   scripts/python_env.sh find [PYTHON]   print a Python >= 3.11 (PYTHON if given and new enough)
#   scripts/python_env.sh venv DIR [PYTHON]
#                                         make DIR a virtualenv of such a Python: keep a good one,
#                                         rebuild one made by a Python that is too old
#
# Candidates, in order: PYTHON if given (then nothing else), python3.13, python3.12, python3.11,
# python3, and a Python uv knows about when uv is installed. macOS's own python3 is 3.9.
set -u

NEEDED="3.11"
HOW="Install one with 'brew install python@3.12' or from https://www.python.org/downloads/ (or 'uv python install 3.12'), then run make again."

new_enough() { # $1: a python command
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

version_of() {
    "$1" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "not runnable"
}

find_python() { # $1: an explicit PYTHON, or empty
    if [ -n "${1:-}" ]; then
        if new_enough "$1"; then
            command -v "$1" || echo "$1"
            return 0
        fi
        version=$(version_of "$1")
        if [ "$version" = "not runnable" ]; then
            echo "PYTHON=$1 cannot be run (is it installed?). This project needs Python $NEEDED or newer. $HOW" >&2
        else
            echo "PYTHON=$1 is Python $version; this project needs Python $NEEDED or newer. $HOW" >&2
        fi
        return 1
    fi
    for candidate in python3.13 python3.12 python3.11 python3; do
        found=$(command -v "$candidate" 2>/dev/null) || continue
        if new_enough "$found"; then
            echo "$found"
            return 0
        fi
    done
    if command -v uv >/dev/null 2>&1; then
        found=$(uv python find ">=$NEEDED" 2>/dev/null) && new_enough "$found" && {
            echo "$found"
            return 0
        }
    fi
    seen="no python3 on PATH"
    if command -v python3 >/dev/null 2>&1; then seen="python3 is $(version_of python3)"; fi
    echo "No Python $NEEDED or newer found ($seen). $HOW" >&2
    return 1
}

make_venv() { # $1: the directory, $2: an explicit PYTHON, or empty
    if [ -n "${2:-}" ]; then
        find_python "$2" >/dev/null || return 1 # a PYTHON= too old stops here, always
    fi
    if [ -x "$1/bin/python" ] || [ -L "$1/bin/python" ]; then
        if new_enough "$1/bin/python"; then
            return 0
        fi
        old=$(version_of "$1/bin/python")
        # Found first, removed after: with nothing to rebuild it from, the old one stays.
        base=$(find_python "${2:-}") || {
            echo "$1 was made by Python $old, too old or gone; it is kept until a newer Python is there to rebuild it." >&2
            return 1
        }
        echo "$1 was made by Python $old, too old or gone; rebuilding it." >&2
        rm -rf "$1"
    else
        base=$(find_python "${2:-}") || return 1
    fi
    echo "Creating $1 with $base (Python $(version_of "$base"))." >&2
    "$base" -m venv "$1"
}

case "${1:-}" in
    find) find_python "${2:-}" ;;
    venv) make_venv "$2" "${3:-}" ;;
    *)
        echo "usage: $0 find [PYTHON] | venv DIR [PYTHON]" >&2
        exit 2
        ;;
esac
