"""Schedules to and from other formats, for the ``titan-phases`` CLI (never needed to train).

* :mod:`.fts_import`: finetuning-scheduler (FTS) YAML schedules to titan_phases' TOML;
* :mod:`.hf_names`: Hugging Face parameter names to torchtitan's, via a model's state-dict
  adapter;
* :mod:`.timeline` and :mod:`.plot`: a run's ``metrics.jsonl`` read back and drawn as one PNG.
"""
