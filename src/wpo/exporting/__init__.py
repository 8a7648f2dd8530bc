"""`wpo export`: the trained model as GGUF files (converted, quantized, verified) with a model card."""
