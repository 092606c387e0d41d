#!/usr/bin/env bash
# Download the official VQA v2 questions and annotations (train2014, val2014; test2015 questions with --test)
# into OUT, next to the COCO images (see download_coco.sh):
#   OUT/v2_OpenEnded_mscoco_{split}_questions.json, OUT/v2_mscoco_{split}_annotations.json
# Resumable; the archives are integrity-checked and the unpacked files are checked for the official question counts.
# Usage: bash data_scripts/download_vqa.sh [OUT=data/coco] [--test]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); . "$here/_fetch.sh"
OUT=data/coco; TEST=0
for a in "$@"; do case "$a" in --test) TEST=1 ;; -h|--help) sed -n 2,7p "$0"; exit 0 ;; *) OUT=$a ;; esac; done
BASE=${MMKT_VQA_BASE:-https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa}
need curl; need unzip
mkdir -p "$OUT/downloads"
check_online "$BASE/v2_Questions_Val_mscoco.zip"

zips=(v2_Questions_Train_mscoco.zip v2_Questions_Val_mscoco.zip v2_Annotations_Train_mscoco.zip v2_Annotations_Val_mscoco.zip)
[ "$TEST" = 1 ] && zips+=(v2_Questions_Test_mscoco.zip)
for z in "${zips[@]}"; do
  fetch "$BASE/$z" - "$OUT/downloads/$z"
  unpack "$OUT/downloads/$z" "$OUT"
done

echo "checking question and annotation counts"
PY=${PYTHON:-python3}
"$PY" - "$OUT" <<'PYEOF' || ERR=5 die "VQA v2 files in $OUT failed verification (see above)"
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
expected = {'train2014': 443757, 'val2014': 214354}
for split, n in expected.items():
    q = json.loads((root / f'v2_OpenEnded_mscoco_{split}_questions.json').read_text())['questions']
    a = json.loads((root / f'v2_mscoco_{split}_annotations.json').read_text())['annotations']
    if len(q) != n or len(a) != n:
        sys.exit(f"{split}: {len(q)} questions / {len(a)} annotations, expected {n}")
    print(f"  {split}: {n} questions and annotations")
PYEOF
echo "VQA v2 ready in $OUT. Zips in $OUT/downloads can be deleted."
