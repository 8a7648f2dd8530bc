"""wpo: Weighted Preference Optimization (arXiv 2406.11827) of chat LLMs, from prompts to a GGUF with its card."""

__version__ = "0.1.0"
