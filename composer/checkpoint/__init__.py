"""Checkpoint I/O: one safetensors file or a ``torch.distributed.checkpoint`` directory, weights and
recipe (and optimizer state), written atomically and read without unpickling anything; tensor
trees; foreign weights. Rebuilds models through ``build``; never imports ``describe`` or ``app``."""
