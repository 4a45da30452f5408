"""Checkpointing: what titan_phases adds to torchtitan's DCP checkpoints, in one room.

* :mod:`.format`: the entries titan_phases stores and reading them back without loading;
* :mod:`.integrity`: integrity records at save, and the newest intact checkpoint at load;
* :mod:`.resume`: which checkpoint a start loads, and rebuilding the phase structure to it;
* :mod:`.best`: ``restore_best``, each phase's best state;
* :mod:`.save_failure`: a save that fails for want of space stops training with one message.
"""
