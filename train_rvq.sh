#!/usr/bin/env bash
# Train the four RVQ-VAEs in the reference's order: lower_trans, upper, hands, then the face (face_jaw: jaw +
# expressions, the generator's 4th part; the reference's expressions-only "face" has configs/rvq/face.yaml).
#   bash train_rvq.sh                          # official sizes (configs/rvq/<part>.yaml)
#   bash train_rvq.sh --suffix _tiny           # smoke configs (configs/rvq/<part>_tiny.yaml)
#   bash train_rvq.sh data.root=/data/beat_english_v2.0.0 device=cuda   # extra args go to every run
set -euo pipefail
cd "$(dirname "$0")"
suffix=""
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --suffix) suffix="$2"; shift 2 ;;
    --suffix=*) suffix="${1#--suffix=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
PYTHON="${PYTHON:-python}"
for part in lower_trans upper hands face_jaw; do
  echo "=== RVQ-VAE ${part} (configs/rvq/${part}${suffix}.yaml) ==="
  "$PYTHON" rvq_beatx_train.py -c "configs/rvq/${part}${suffix}.yaml" ${args[@]+"${args[@]}"}
done
