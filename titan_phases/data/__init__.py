"""Embedded default data: two corpora of different domains and a BPE tokenizer trained on them.

Nothing is downloaded: the pretraining corpus ships with the package and the fine-tuning corpus
is generated from a fixed seed. :func:`titan_phases.data.assets.ensure_assets` materialises both
(with validation splits) and the tokenizer into a cache directory, once.
"""
