"""The WPO trainer and its parts: tokenization, reference log-probs, checkpoints, metrics."""
