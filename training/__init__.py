"""Training the embedded default model on the toy world: `python -m training.train --stage …`."""
