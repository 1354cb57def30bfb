#!/bin/bash
# M2: procedure C's val grid for one seed. usage: val.sh SEED
s=$1
if [ "$s" = 45 ]; then ck=/work/exp/s24/mjB/runs/shortcut_tiny/20261203_130444/checkpoints/best.pt
else ck=$(ls /work/exp/s24/seeds/s$s/shortcut_tiny/*/checkpoints/best.pt); fi
cd /work/exp/s25/code && OMP_NUM_THREADS=1 python benchmarks/val_check.py --output-dir /work/exp/s24/mjB \
  --checkpoint $ck --guidance 1.0 1.25 1.375 1.5 1.75 2.0 --crossfade 2 --out /work/exp/s25/val_$s.json > /work/exp/s25/val_$s.log 2>&1
