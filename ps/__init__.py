"""The parameter server: parameter store, optimizers, staleness policy, and its main loop."""
