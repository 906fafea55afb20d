#!/usr/bin/env bash
# Wheels for tools/gpu_check.sh's asv stage on a machine without a package index (a lent
# GPU machine: Python 3.12, numpy, numba, numba-cuda, torch, packaging, tabulate and PyYAML
# already there, asv not). Downloads into .whl/ (ignored by git; name it in the device
# call's carry), where gpu_check.sh installs them into /tmp/site:
#
#   bash tools/gpu_wheels.sh [python version, default 3.12]
#
# Tried: these six wheels alone, in a virtual environment holding only numpy, numba,
# packaging, tabulate and PyYAML, ran `STAGES=asv bash tools/gpu_check.sh`.
# (importlib-metadata stays at 8.7: 10.x needs a lazy_importer package.)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version "${1:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    asv==0.6.6 asv_runner==0.3.2 json5==0.17.3 importlib-metadata==8.7.0 zipp==4.1.2 \
    pympler==1.1
ls -l .whl
