#!/usr/bin/env bash
# Download the official COCO 2014 images and captions into the layout mmkt's readers expect:
#   OUT/train2014/COCO_train2014_*.jpg, OUT/val2014/..., OUT/annotations/captions_{train,val}2014.json
# and, with --test, OUT/test2015/ + OUT/annotations/image_info_test2015.json (for VQA test-dev / test).
# Resumable (run it again after an interruption) and md5-verified. About 20 GB (32 GB with --test).
# Usage: bash data_scripts/download_coco.sh [OUT=data/coco] [--test]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); . "$here/_fetch.sh"
OUT=data/coco; TEST=0
for a in "$@"; do case "$a" in --test) TEST=1 ;; -h|--help) sed -n 2,7p "$0"; exit 0 ;; *) OUT=$a ;; esac; done
BASE=${MMKT_COCO_BASE:-http://images.cocodataset.org}
need curl; need unzip; need md5sum
mkdir -p "$OUT/downloads"
check_online "$BASE/annotations/annotations_trainval2014.zip"

files=("annotations/annotations_trainval2014.zip 0a379cfc70b0e71301e0f377548639bd"
       "zips/val2014.zip a3d79f5ed8d289b7a7554ce06a5782b3"
       "zips/train2014.zip 0da8c0bd3d6becc4dcb32757491aca88")
if [ "$TEST" = 1 ]; then
  files+=("annotations/image_info_test2015.zip d9616c9742182f530e2e6d8c6ccd916a"
          "zips/test2015.zip 65562e58af7d695cc47356951578c041")
fi
for entry in "${files[@]}"; do
  set -- $entry
  fetch "$BASE/$1" "$2" "$OUT/downloads/$(basename "$1")"
  unpack "$OUT/downloads/$(basename "$1")" "$OUT"
done

echo "checking the layout"
for f in annotations/captions_train2014.json annotations/captions_val2014.json; do
  [ -s "$OUT/$f" ] || ERR=5 die "$OUT/$f missing after unpacking"
done
n_train=$(find "$OUT/train2014" -name '*.jpg' | wc -l); n_val=$(find "$OUT/val2014" -name '*.jpg' | wc -l)
[ "$n_train" -eq 82783 ] || ERR=5 die "$OUT/train2014 holds $n_train images, expected 82783"
[ "$n_val" -eq 40504 ] || ERR=5 die "$OUT/val2014 holds $n_val images, expected 40504"
echo "COCO 2014 ready in $OUT: $n_train train and $n_val val images. Zips in $OUT/downloads can be deleted."
