"""What each tiny causal test model is: its architecture, special tokens, template, and (for the
reasoning families) a script its weights are set to follow under greedy decoding.

Added tokens come in two kinds, as in the real tokenizers: ``specials`` (hidden by
``skip_special_tokens``) and ``added`` (plain added tokens such as Qwen's ``<think>`` and
``<tool_call>``, which stay in decoded text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import transformers

from tests.tiny_templates import (
    CHATML_TEMPLATE,
    DEEPSEEK_R1_TEMPLATE,
    GEMMA_TEMPLATE,
    GENERIC_TEMPLATE,
    LLAMA3_TEMPLATE,
    MISTRAL_TEMPLATE,
    PHI3_TEMPLATE,
    PHI4_TEMPLATE,
    QWEN3_TEMPLATE,
    QWEN25_TEMPLATE,
)


@dataclass(frozen=True)
class CausalSpec:
    config_cls: type
    model_cls: type
    specials: tuple[str, ...]
    template: str
    eos: str
    pad: str
    bos: str | None = None
    unk: str | None = None
    add_bos: bool = False  # tokenizer prepends bos on encode, like the real one
    extra_eos: tuple[str, ...] = ()  # additional stop tokens, generation_config only
    nfc: bool = False  # Qwen2 normalises to NFC (and transformers 5 forces it on load anyway)
    added: tuple[str, ...] = ()  # added tokens that are not special (they survive decoding)
    paragraphs: bool = False  # also learn "\n\n" as one token, as the real vocabularies have it
    config: dict[str, Any] = field(default_factory=dict)  # extra config fields (head_dim, ...)
    # Greedy decoding follows these (current token → next token) steps; see tiny_models._script.
    script: tuple[tuple[str, str], ...] = ()


QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
DEEPSEEK_TOOL_TOKENS = (
    "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
    "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>",
    "<｜tool▁sep｜>",
)
# A thought, then the answer: "The user says goodbye" … "Goodbye!". Qwen 3 opens <think> itself
# after "assistant\n"; a prompt that closed an empty think block ("</think>\n\n") answers at once.
THOUGHT = (("The", " user"), (" user", " says"), (" says", " goodbye"), (" goodbye", "</think>"),
           ("</think>", "Good"), ("Good", "bye"), ("bye", "!"))

CAUSAL_SPECS: dict[str, CausalSpec] = {
    "chatml": CausalSpec(
        transformers.Qwen2Config, transformers.Qwen2ForCausalLM, specials=QWEN_SPECIALS,
        template=CHATML_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>", nfc=True,
    ),
    "llama3": CausalSpec(
        transformers.LlamaConfig, transformers.LlamaForCausalLM,
        specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"),
        # Llama 3 ships no pad token; end_of_text is the usual stand-in.
        template=LLAMA3_TEMPLATE, bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|end_of_text|>",
        add_bos=True, extra_eos=("<|end_of_text|>", "<|eom_id|>"),
    ),
    "mistral": CausalSpec(
        transformers.MistralConfig, transformers.MistralForCausalLM,
        specials=("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]",
                  "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"),
        template=MISTRAL_TEMPLATE, bos="<s>", eos="</s>", pad="</s>", unk="<unk>", add_bos=True,
    ),
    "generic": CausalSpec(
        transformers.LlamaConfig, transformers.LlamaForCausalLM,
        specials=("<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"),
        template=GENERIC_TEMPLATE, bos="<s>", eos="</s>", pad="</s>",
    ),
    "qwen25": CausalSpec(
        transformers.Qwen2Config, transformers.Qwen2ForCausalLM, specials=QWEN_SPECIALS,
        template=QWEN25_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>", nfc=True,
        extra_eos=("<|endoftext|>",), added=("<tool_call>", "</tool_call>"), paragraphs=True,
    ),
    "qwen3": CausalSpec(
        transformers.Qwen3Config, transformers.Qwen3ForCausalLM, specials=QWEN_SPECIALS,
        template=QWEN3_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>", nfc=True, extra_eos=("<|endoftext|>",),
        added=("<tool_call>", "</tool_call>", "<think>", "</think>"), paragraphs=True, config={"head_dim": 16},
        script=(("\n", "<think>"), ("<think>", "The"), *THOUGHT, ("\n\n", "Good"), ("!", "<|im_end|>")),
    ),
    "gemma": CausalSpec(
        transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM,
        specials=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        template=GEMMA_TEMPLATE, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", add_bos=True,
        extra_eos=("<end_of_turn>",), paragraphs=True,
        # Room for Google's tool prompt, long in a 1000-token vocabulary.
        config={"head_dim": 16, "query_pre_attn_scalar": 16, "max_position_embeddings": 1024},
    ),
    "phi3": CausalSpec(
        transformers.Phi3Config, transformers.Phi3ForCausalLM,
        specials=("<unk>", "<s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>"),
        template=PHI3_TEMPLATE, bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", unk="<unk>",
        extra_eos=("<|end|>",), paragraphs=True,
    ),
    "phi4": CausalSpec(
        transformers.Phi3Config, transformers.Phi3ForCausalLM,
        specials=("<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>", "<|tool|>",
                  "<|/tool|>", "<|tool_call|>", "<|/tool_call|>", "<|tool_response|>"),
        template=PHI4_TEMPLATE, bos="<|endoftext|>", eos="<|endoftext|>", pad="<|endoftext|>",
        extra_eos=("<|end|>",), paragraphs=True,
    ),
    "deepseek_r1": CausalSpec(
        transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
        specials=("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"),
        template=DEEPSEEK_R1_TEMPLATE, bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>",
        pad="<｜end▁of▁sentence｜>", add_bos=True, nfc=True, paragraphs=True,
        added=("<think>", "</think>", *DEEPSEEK_TOOL_TOKENS),
        # Its template opens <think> in the prompt: the output starts inside the thought.
        script=(("\n", "The"), *THOUGHT, ("!", "<｜end▁of▁sentence｜>")),
    ),
}
