"""The retention/adaptation study: what a phase schedule does to a model (STUDIES.md).

The llama3 debug model is pretrained on corpus A (embedded Python docs), then fine-tuned on
corpus B (embedded recipes) with the same token budget under several phase schedules
(:mod:`.strategies`) and several data orders (:mod:`.corpus`). Every checkpoint is evaluated on
both validation splits (:mod:`.evaluate`): B's loss measures adaptation, A's loss forgetting.
What each job's ranks hold (weights, fp32 masters, grads, optimizer state) is read from its
metrics and checked against ``titan-phases plan`` (:mod:`.memory`).
"""
