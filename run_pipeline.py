"""Run the whole research loop on one corpus: corpus -> cache/statistics -> FGD autoencoder -> RVQ-VAEs ->
shortcut + diffusion generators -> test -> learning check -> report. Logic: pipeline/.

    python run_pipeline.py -c configs/pipeline/synthetic_cpu.yaml                 # the README's main job (CPU)
    python run_pipeline.py -c configs/pipeline/ci_tiny.yaml output_dir=/tmp/p     # a few minutes
    python run_pipeline.py -c configs/pipeline/synthetic_cpu.yaml force=all       # rerun every stage
    python run_pipeline.py -c configs/pipeline/synthetic_cpu.yaml force=[gen,test] # rerun some stages
"""

import sys

from pipeline.main import main

if __name__ == "__main__":
    sys.exit(main())
