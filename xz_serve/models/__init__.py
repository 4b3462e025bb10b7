"""Model code: tokenize, forward, postprocess. Runs and benchmarks without Ray."""
