"""Request values that are valid on the wire but would break the arithmetic of a worker.

OpenAI accepts any ``temperature`` in [0, 2] and ``top_p`` in (0, 1]; values like ``5e-324`` are
"valid" yet overflow (logits / temperature) or vanish in float32 (top_p), and the sampler then
meets NaN. Such values mean greedy decoding, so that is what the worker is asked for.
"""

from __future__ import annotations

from tasks.contract.payloads import SamplingParams

MIN_TEMPERATURE = 1e-4  # below: greedy (a softmax this sharp is an argmax anyway)
MIN_TOP_P = 1e-6  # below: the nucleus is the single most likely token, which 1e-6 keeps too
MIN_REPETITION_PENALTY = 1e-2  # logits are divided by it: a vanishing one overflows to inf


def stable_sampling(params: SamplingParams) -> SamplingParams:
    update: dict[str, float] = {}
    if 0.0 < params.temperature < MIN_TEMPERATURE:
        update["temperature"] = 0.0
    if params.top_p < MIN_TOP_P:
        update["top_p"] = MIN_TOP_P
    penalty = getattr(params, "repetition_penalty", None)  # where the payload has one
    if penalty is not None and penalty < MIN_REPETITION_PENALTY:
        update["repetition_penalty"] = MIN_REPETITION_PENALTY
    return params.model_copy(update=update) if update else params
