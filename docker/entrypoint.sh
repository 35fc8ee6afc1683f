#!/bin/sh
# `docker run IMAGE key=value ...` trains with those overrides; `docker run IMAGE CMD ...` runs CMD
# (torchrun, python, evaluate.py ...). Outputs go to the working directory, the /runs volume.
set -e
case "${1:-}" in
    "" | *=* | -*) exec python /app/train.py "$@" ;;
    train.py | evaluate.py) script="$1"; shift; exec python "/app/$script" "$@" ;;
    *) exec "$@" ;;
esac
