"""Synthetic long-context instruction data, the LLaMA 2 Long recipe (Xiong et al. 2023,
https://arxiv.org/abs/2309.16039): an instruct model writes a question, a short and a long answer about a random
chunk of a long document, the pair is checked (the chunk must contain the answer's content words, and the
model's own verdict must be yes), and the example's context is the whole document, truncated to the target
length, with the question at the end.

Modules: check (pure acceptance checks) · prompts (few-shot prompts) · model (greedy completion, calibrated
yes/no verdict) · run (chunks, driver, resume, summary).
"""

from .run import SynthSettings, synthesize

__all__ = ["SynthSettings", "synthesize"]
