"""Deeper and shallower llama3 debug models for the scaling runs (``[experimental] custom_import``).

Registers two TrainSpecs with the same extra flavors (width 256, like ``debugmodel``):

* ``llama3_bench``: torchtitan's own ``llama3`` spec, builders untouched (the stock baseline);
* ``llama3_phases_bench``: ``phased(llama3)``, as titan_phases registers ``llama3_phases``.

Flavors: ``depth<N>`` for each N in :data:`DEPTHS`.
"""

import dataclasses

from torchtitan.models.llama3 import TransformerModelArgs
from torchtitan.protocols.train_spec import get_train_spec, register_train_spec

from titan_phases.train_spec import phased

DEPTHS = (3, 6, 12)
STOCK_SPEC = "llama3_bench"
PHASED_SPEC = "llama3_phases_bench"

FLAVORS = {
    f"depth{n}": TransformerModelArgs(
        dim=256, n_layers=n, n_heads=16, vocab_size=2048, rope_theta=500000
    )
    for n in DEPTHS
}

_stock = get_train_spec("llama3")
register_train_spec(STOCK_SPEC, dataclasses.replace(_stock, model_args=dict(FLAVORS)))
register_train_spec(PHASED_SPEC, dataclasses.replace(phased(_stock), model_args=dict(FLAVORS)))
