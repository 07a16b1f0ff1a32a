"""Tiny random Hugging Face model folders, one per chat-template family, for fast tests.

Everything is built locally (no hub access) and deterministically: the tokenizers come from
the fixed text below and the weights are drawn after ``torch.manual_seed(0)``, so two builds
give byte-identical folders.  The weights are random, so generated text is gibberish; what is
real is the folder layout, the special tokens and the chat templates.

    python -m tests.tiny_models OUT_DIR      # builds OUT_DIR/<family> for every family
"""

from __future__ import annotations

import json
import pathlib
import string
import sys
from collections import Counter

import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tests.tiny_specs import CAUSAL_SPECS, CausalSpec

FAMILIES = ("chatml", "llama3", "mistral", "generic", "bert", "qwen25", "qwen3", "gemma", "phi3", "phi4", "deepseek_r1")

# Qwen2's pre-tokenisation regex (GPT-4 style, one digit per token), shared by all causal families.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Training text for the tokenizers.  Varied enough that BPE reaches ~1000 entries; anything not
# covered here still round-trips because the causal tokenizers are byte-level.
CORPUS = """\
The quick brown fox jumps over the lazy dog. A small language model answers questions,
writes short stories, and explains how things work. Hello, world! How are you today?
I am fine, thank you. Please be brief, and answer in one sentence if you can.

The assistant reads the user's message, thinks about the request, and replies politely.
When the user says goodbye, the assistant says goodbye too. Numbers such as 0, 1, 2, 3, 42,
100 and 2024 appear in dates, prices and counts: it costs $19.99, or about 20 dollars.

Weather report: sunny in the morning, cloudy in the afternoon, with light rain in the evening.
Temperatures range from 12 to 18 degrees. Tomorrow will be warmer, and the wind will calm down.
People walk their dogs in the park, children play football, and birds sing in the trees.

To make a cup of tea, boil fresh water, warm the pot, add the leaves and wait three minutes.
Milk and sugar are optional. Some people prefer coffee, which is stronger and more bitter.
Breakfast might be toast with butter, an apple, or a bowl of cereal with cold milk.

Computers store information as bits. A program is a list of instructions; a function takes
inputs and returns outputs. Python, JavaScript and Rust are popular programming languages.
Servers handle requests, stream responses, and log errors when something goes wrong.
def add(a, b): return a + b  # {"name": "get_weather", "arguments": {"city": "Paris"}}

History is full of kings, queens, explorers and inventors. Ships crossed the ocean, trains
connected cities, and aeroplanes made the world smaller. Libraries keep books, maps and
letters so that future generations can learn what happened long ago.

Science asks questions and tests answers with experiments. Chemists mix solutions, physicists
measure light and energy, and biologists study cells, plants and animals. Mathematics gives
them a common language: equations, graphs, probability and statistics. Good research is
careful, honest and repeatable; surprising results deserve a second look before anyone
believes them. Doctors and nurses use this knowledge every day in hospitals and clinics.

Music, painting and theatre entertain and move us. Musicians practise scales for hours,
painters mix colours on a palette, and actors rehearse their lines before the show opens.
Festivals bring together crowds from every country, sharing food, songs and friendship.
Travelling by bicycle is healthy, quiet and cheap, although hills can be exhausting.
"""

def _corpus_lines() -> list[str]:
    return [line for line in CORPUS.splitlines() if line.strip()]


def _causal_tokenizer(spec: CausalSpec) -> transformers.PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    if spec.nfc:
        backend.normalizer = normalizers.NFC()
    # The Qwen2 pre-tokenizer: for model_type qwen2 transformers 5 ignores tokenizer.json's and
    # rebuilds exactly this one, so training with it keeps v4 and v5 tokenisation identical.
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    # Listing the specials in the trainer gives them the first ids and registers them as
    # special added tokens, so each one encodes to a single id and is never merged into.
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=list(spec.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    # Blank lines are not in the line-split corpus; real vocabularies have "\n\n" as one token.
    paragraphs = ["one\n\ntwo"] * 50 if spec.paragraphs else []
    backend.train_from_iterator(_corpus_lines() + paragraphs, trainer=trainer)
    if spec.add_bos:
        # Prepend bos the way the real Llama 3 / Mistral tokenizer.json does, so a server that
        # renders the template (which already starts with bos) and then encodes with
        # add_special_tokens=True visibly gets two of them.
        bos_id = backend.token_to_id(spec.bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B:1",
            special_tokens=[(spec.bos, bos_id)],
        )
    named = {f"{k}_token": v for k, v in
             (("bos", spec.bos), ("eos", spec.eos), ("pad", spec.pad), ("unk", spec.unk)) if v}
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        extra_special_tokens=[t for t in spec.specials if t not in named.values()],
        model_max_length=512,
        **named,
    )
    if spec.added:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.added])
    tokenizer.chat_template = spec.template
    return tokenizer


def _build_causal(spec: CausalSpec, out_dir: pathlib.Path) -> None:
    tokenizer = _causal_tokenizer(spec)
    ids = {name: tokenizer.convert_tokens_to_ids(tok)
           for name, tok in (("bos", spec.bos), ("eos", spec.eos), ("pad", spec.pad)) if tok}
    config = spec.config_cls(**{
        "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 512, "tie_word_embeddings": False,
        "bos_token_id": ids.get("bos"), "eos_token_id": ids["eos"], "pad_token_id": ids["pad"], **spec.config,
    })
    torch.manual_seed(0)
    model = spec.model_cls(config).to(torch.float32)
    if spec.script:
        _script(model, tokenizer, spec.script)
    model.config.dtype = "float32"
    eos_list = [ids["eos"], *tokenizer.convert_tokens_to_ids(list(spec.extra_eos))]
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=ids.get("bos"), pad_token_id=ids["pad"],
        eos_token_id=eos_list if len(eos_list) > 1 else eos_list[0],
    )
    model.save_pretrained(out_dir)
    _save_tokenizer(tokenizer, out_dir)


def _script(model: torch.nn.Module, tokenizer: transformers.PreTrainedTokenizerBase,
            steps: tuple[tuple[str, str], ...]) -> None:
    """Set the weights so that greedy decoding follows ``steps`` (current token → next token),
    whatever the context: attention and MLP outputs are zeroed, so the last hidden state is the
    normalised embedding of the current token; the embeddings of the steps' tokens are made
    orthonormal directions and each next token's output row points along its predecessor's, so
    it wins by a wide margin (about 40 against noise of about 0.2). Other tokens stay random."""
    ids = {t: tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t)) for pair in steps for t in pair}
    for text, got in ids.items():
        if len(got) != 1:
            raise ValueError(f"script token {text!r} is not one token here: {got}")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                param.zero_()
        embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        sources = list(dict.fromkeys(ids[a][0] for a, _ in steps))
        basis, _ = torch.linalg.qr(torch.randn(embed.shape[1], len(sources)))
        for i, tok in enumerate(sources):
            embed[tok] = basis[:, i] * embed[tok].norm()
        for tok in {ids[b][0] for _, b in steps}:
            head[tok] = 0.0
        for a, b in steps:
            head[ids[b][0]] += 5.0 * basis[:, sources.index(ids[a][0])]


def _save_tokenizer(tokenizer: transformers.PreTrainedTokenizerBase, out_dir: pathlib.Path) -> None:
    tokenizer.save_pretrained(out_dir)
    # transformers 5 no longer writes special_tokens_map.json; older loaders and tools still
    # look for it, so write the v4 layout by hand.
    special = dict(tokenizer.special_tokens_map)
    if tokenizer.extra_special_tokens:
        special["additional_special_tokens"] = [str(t) for t in tokenizer.extra_special_tokens]
    _write_json(out_dir / "special_tokens_map.json", special)


def _write_json(path: pathlib.Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _wordpiece_vocab(specials: list[str]) -> dict[str, int]:
    # Not tokenizers' WordPieceTrainer: it numbers the "##x" pieces in hash-map order, so its
    # merges (and even its vocab size) change from run to run.  Whole corpus words ranked by
    # frequency, over a full ASCII character fallback, make an equally valid WordPiece vocab.
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for line in _corpus_lines()
                     for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    pieces = [*specials, *chars, *("##" + c for c in chars)]
    pieces += [w for w in sorted(counts, key=lambda w: (-counts[w], w)) if w not in pieces]
    return {piece: i for i, piece in enumerate(pieces[:1000])}


def _build_bert(out_dir: pathlib.Path) -> None:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, as BertTokenizer assumes
    vocab = _wordpiece_vocab(specials)
    # transformers 5's BertTokenizer builds its own normalizer/pre-tokenizer/post-processor
    # around a vocab dict (and does so again on load), so a vocab is all it needs.
    tokenizer = transformers.BertTokenizerFast(vocab=vocab, do_lower_case=True,
                                               model_max_length=128)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).to(torch.float32)
    model.config.dtype = "float32"
    model.save_pretrained(out_dir)
    _save_tokenizer(tokenizer, out_dir)
    # For loaders that start from vocab.txt (BertTokenizer(vocab=path), v4's slow tokenizer).
    (out_dir / "vocab.txt").write_text("".join(tok + "\n" for tok in vocab), encoding="utf-8")

    # sentence-transformers files, mirroring all-MiniLM-L6-v2: Transformer -> mean -> L2 norm.
    modules = (("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize"))
    _write_json(out_dir / "modules.json", [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{cls}"}
        for i, (path, cls) in enumerate(modules)
    ])
    _write_json(out_dir / "1_Pooling" / "config.json", {
        "word_embedding_dimension": config.hidden_size, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    })
    _write_json(out_dir / "sentence_bert_config.json",
                {"max_seq_length": 128, "do_lower_case": False})
    # As in all-MiniLM-L6-v2; sentence-transformers only reads it to warn about newer formats.
    _write_json(out_dir / "config_sentence_transformers.json", {
        "__version__": {"sentence_transformers": "2.0.0", "transformers": "4.6.1",
                        "pytorch": "1.8.1"},
    })


def build_tiny_model(family: str, out_dir: pathlib.Path) -> pathlib.Path:
    """Write a tiny random HF model folder for ``family`` (one of FAMILIES) into ``out_dir``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if family == "bert":
        _build_bert(out_dir)
    else:
        _build_causal(CAUSAL_SPECS[family], out_dir)
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.tiny_models OUT_DIR")
    root = pathlib.Path(sys.argv[1])
    for fam in FAMILIES:
        print(build_tiny_model(fam, root / fam))
