#!/usr/bin/env bash
# Prepares, beside the checkout, what a GPU machine without TensorFlow or a package index needs for
# benchmarks/gpu_run.sh, in two folders .gitignore lists (about 33 MB in all):
#   .whl/                 Keras 3.15.1 and the two wheels it needs that such a machine lacks (namex, optree),
#                         for CPython 3.12 on x86_64 Linux;
#   .data/fashion-mnist/  Fashion-MNIST's four idx files, copied from Debian's dataset-fashion-mnist.
# Copy both folders to the GPU machine with the working tree; gpu_run.sh installs the wheels into /tmp/site
# (pip --no-index) and reads the data from .data/ there.
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE=/usr/share/datasets/fashion-mnist
if ! ls "$SOURCE"/*-ubyte.gz >/dev/null 2>&1; then
  echo "prepare_gpu_carry: no Fashion-MNIST files in $SOURCE; install them with" \
       "'apt-get install -y dataset-fashion-mnist'" >&2
  exit 2
fi
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
mkdir -p .data/fashion-mnist
cp "$SOURCE"/*-ubyte.gz .data/fashion-mnist/
ls .whl .data/fashion-mnist
du -sh .whl .data
