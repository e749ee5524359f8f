"""What the EF21-SGDM poster's MNIST experiment shows, as R4 in docs/algorithms.md reads it off the figures:
the reference the measured ratios, levels and step sizes are set against."""

# the ratio EF21-SGD / momentum method (final ||grad f||^2) the poster's curves show, per batch size
POSTER = {1: (20, 30), 128: (3, 10)}

# the step sizes the poster uses, per (batch, method)
POSTER_LR = {
    (1, "ef21"): 2**-6,
    (1, "ef21-sgd2m"): 2**-5,
    (1, "ef21-sgdm"): 2**-7,
    (1, "ef14"): 2**-4,
    (128, "ef21"): 2**-6,
    (128, "ef21-sgd2m"): 2**-4,
    (128, "ef21-sgdm"): 2**-3,
    (128, "ef14"): 2**-2,
}

# the final ||grad f||^2 the poster's curves end at, per batch size and method: (low, high)
POSTER_LEVELS = {
    1: {"ef21": (2e-1, 5e-1), "ef21-sgdm": (1e-2, 1e-2), "ef21-sgd2m": (1e-2, 1e-2), "ef14": (1e-2, 1e-2)},
    128: {"ef21": (3e-3, 3e-3), "ef21-sgdm": (5e-4, 1e-3), "ef21-sgd2m": (2e-4, 4e-4), "ef14": (3e-3, 3e-3)},
}
