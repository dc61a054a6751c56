#!/usr/bin/env bash
# Wheels of the public YOLOv5 (pip yolov5==7.0.14) and of what it imports at module level, for a machine
# without network (the lent GPU machine): fetched here from the package index, carried there, installed
# offline by `bash bench/bench_vs_yolov5.sh --setup --site DIR --wheels WHEELDIR`. All are pure Python.
# torch, torchvision, numpy, opencv, pandas, matplotlib, seaborn, psutil, requests, PyYAML, tqdm, scipy are
# taken from the target machine (the GPU machine's image has them); setuptools 69 brings pkg_resources,
# which yolov5 imports and newer setuptools no longer ship. Same package list as bench_vs_yolov5.sh's venv.
#
# Usage: bash bench/fetch_yolov5_wheels.sh [dir] [python version]      (default .whl and 3.12: the GPU
#        machine's Python). EXTRA="torchvision==0.28.0" adds packages (e.g. to try the site mode here).
set -euo pipefail
DIR="${1:-.whl}"; PYV="${2:-3.12}"
mkdir -p "$DIR"
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DIR" \
  yolov5==7.0.14 ultralytics==8.3.28 roboflow==1.1.49 huggingface-hub==0.24.7 thop==0.1.1.post2209072238 \
  requests-toolbelt==1.0.0 filetype==1.2.0 fire==0.7.1 termcolor==3.3.0 setuptools==69.5.1 ${EXTRA:-}
ls -1 "$DIR"/*.whl
echo "$(ls "$DIR"/*.whl | wc -l) wheels in $DIR ($(du -sh "$DIR" | cut -f1)); keep $DIR out of git (.gitignore has .whl/)"
