"""The eval stage: the model's answers to held-out prompts, judged against reference answers (wpo's judges or
alpaca_eval's own annotator), per-prompt measures against the base model, contamination against the training data,
and the evaluation's page (`templates/`). `stage.py` runs it; the rest are its pure parts."""
