"""Training programs: `grpo.py` is what `trl-perception train` runs and what users copy to change a step."""
