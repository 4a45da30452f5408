"""Schedules to and from other formats, for the ``titan-phases`` CLI (never needed to train).

* :mod:`.fts_import`: finetuning-scheduler (FTS) YAML schedules to titan_phases' TOML;
* :mod:`.hf_names`: Hugging Face parameter names to torchtitan's, via a model's state-dict
  adapter;
* :mod:`.toml_writer`: schedules written back as TOML;
* :mod:`.table`: the phase table that ``validate`` and ``show`` print.
"""
