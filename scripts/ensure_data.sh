#!/usr/bin/env bash
# Makes sure Fashion-MNIST (Debian package dataset-fashion-mnist) is on disk.
set -euo pipefail
DIR="${VITRES_FMNIST_DIR:-/usr/share/datasets/fashion-mnist}"
FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
missing=0
for f in $FILES; do [ -f "$DIR/$f" ] || missing=1; done
[ "$missing" = 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Fashion-MNIST not found in $DIR: installing Debian package dataset-fashion-mnist" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist
  exit 0
fi
cat >&2 <<MSG
Fashion-MNIST is missing: expected the four IDX .gz files in $DIR.
Install it as root with:
    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist
or put the files (train-images-idx3-ubyte.gz, ...) in a folder and pass --data-dir.
MSG
exit 1
