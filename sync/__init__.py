"""The synchronous baseline as its own role: N workers as one torch.distributed group."""
