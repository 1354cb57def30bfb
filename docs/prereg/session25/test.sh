#!/bin/bash
# M2: each seed's learning check on test at its g* (decision.json). usage: test.sh SEED
s=$1
g=$(python -c "import json;print(json.load(open('/work/exp/s25/decision.json'))['$s']['g_star'])")
if [ "$s" = 45 ]; then ck=/work/exp/s24/mjB/runs/shortcut_tiny/20261203_130444/checkpoints/best.pt
else ck=$(ls /work/exp/s24/seeds/s$s/shortcut_tiny/*/checkpoints/best.pt); fi
cd /work/exp/s25/code && OMP_NUM_THREADS=1 python benchmarks/val_check.py --output-dir /work/exp/s24/mjB \
  --checkpoint $ck --guidance $g --crossfade 2 --split test --allow-test --out /work/exp/s25/test_$s.json > /work/exp/s25/test_$s.log 2>&1
