"""The OPT-IML instruction-tuning recipe: its two-level sampler, pre-training text and mixture."""
