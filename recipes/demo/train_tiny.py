"""Reproduce the tiny SFT -> GRPO vs continued-SFT experiment on CPU (the code: tiny_experiment.py, next to this
file; it needs trl_perception installed or on PYTHONPATH).

Examples (each writes results.json and prints the mean ± std table over seeds):

    python recipes/demo/train_tiny.py --setting imperfect_supervision --output-dir runs/imperfect \
        --export-checkpoint trl_perception/assets/tiny_checkpoint
    python recipes/demo/train_tiny.py --setting high_perplexity --output-dir runs/high_perplexity

Runs resume: finished stages and seeds found in OUTPUT_DIR/results.json are not run again.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Running this file puts its folder first on sys.path, so the experiment next to it imports by name.
from tiny_experiment import main  # noqa: E402

if __name__ == "__main__":
    main()
