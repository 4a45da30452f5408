"""titan_phases: scheduled, multi-phase fine-tuning (gradual unfreezing) for torchtitan."""

__version__ = "0.1.0"
