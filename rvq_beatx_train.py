"""Train one per-body-part RVQ-VAE (stage 1 of GestureLSM). Thin entry point; the logic is in trainers/rvq.py.

    python rvq_beatx_train.py -c configs/rvq/upper.yaml [key=value ...]
    python rvq_beatx_train.py --body_part hands                  # = -c configs/rvq/hands.yaml
    python rvq_beatx_train.py -c configs/rvq/upper_tiny.yaml     # CPU smoke run on the synthetic corpus
    python rvq_beatx_train.py -c configs/rvq/upper.yaml --resume outputs/rvq/rvq_upper/<time>/checkpoints/last.pt
"""

from trainers.rvq import main

if __name__ == "__main__":
    main()
