"""Initialization: named initializers, the rules that select tensors, torch.nn's defaults written per
tensor, and filling each tensor from its own random stream (large ones in threads)."""
