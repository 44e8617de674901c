"""The procedural toy world: flat, orbit and street scenes with exact ground truth, and the oracle."""
