"""Instruction following with verifiable constraints (IFEval-style): the quickstart's task and programmatic reward.

A prompt asks about a topic and adds one format constraint written in IFEval's wording: two required keywords, a word
limit, an exact number of markdown bullets, a <<title>>, or no commas. The reward reads the constraint back *from the
prompt's text*, so it is a pure function of (prompt, response) that works on any prompt carrying these instructions,
and scores how well the response obeys it in [0, 1] — with partial credit where "how far off" is measurable
(keywords present, word count over the limit, bullets off by one, number of commas), which gives pairs a graded
signal rather than ties.

The five kinds are those on which SmolLM2-135M-Instruct's own samples vary (measured on the dev prompts: best of 3
samples well above their mean), so on-policy pairs carry signal. IFEval's all-capitals, all-lowercase, closing-phrase
and quotation-marks constraints were tried and dropped: the model never satisfied them within 48 new tokens, so
every pair taught them only through the off-policy reference, and two CPU epochs did not move them.

The shipped prompt files (`builtin:ifeval-train.jsonl`, `builtin:ifeval-heldout.jsonl`) are built by
`build_prompts()` from `ifeval-topics.tsv`: three short facts per topic, split by topic so no held-out topic is seen in
training. Each prompt carries a `reference` answer made from its topic's facts that satisfies the constraint — the
hybrid pool's off-policy "strong model" answer. Rebuild them with `python -m wpo.tasks.ifeval`.

The parts: `constraints` (each kind one object), `topics`, `reward` (the training reward and IFEval's strict
accuracy), `judge` (the eval judge) and `prompts` (the file builder). Recipes name the functions re-exported here
(`wpo.tasks.ifeval:reward`, `:constraint_accuracy`, `:content_preference`, `:content_quality`).
"""

from wpo.tasks.ifeval.constraints import CONSTRAINTS, Constraint, constraints_in, instruction_text, reference_answer
from wpo.tasks.ifeval.judge import JUDGE_TEMPERATURE, content_preference, content_quality
from wpo.tasks.ifeval.prompts import DEV_FILE, HELDOUT_FILE, HELDOUT_TOPICS, TRAIN_FILE, build_prompts
from wpo.tasks.ifeval.reward import constraint_accuracy, fact_coverage, format_score, reward
from wpo.tasks.ifeval.topics import Topic, load_topics, topic_of

__all__ = [
    "CONSTRAINTS",
    "DEV_FILE",
    "HELDOUT_FILE",
    "HELDOUT_TOPICS",
    "JUDGE_TEMPERATURE",
    "TRAIN_FILE",
    "Constraint",
    "Topic",
    "build_prompts",
    "constraint_accuracy",
    "constraints_in",
    "content_preference",
    "content_quality",
    "fact_coverage",
    "format_score",
    "instruction_text",
    "load_topics",
    "reference_answer",
    "reward",
    "topic_of",
]
