"""Loading a model folder: device, dtype, thread count, optional bitsandbytes, GGUF files.

Every failure here is a :class:`~tasks.errors.JobError` with a message a person can act on; the
worker announces it as its ``failed`` state rather than crashing without a word.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasks.contract.errors import JobError
from tasks.contract.payloads import LoadOptions

from . import cpu_linear

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_error(message: str) -> JobError:
    return JobError(message, status_code=500, type="server_error", code="model_load_failed")


@dataclass
class Placement:
    device: torch.device
    dtype: torch.dtype


def choose_placement(options: LoadOptions, bf16_on_cpu: bool = True) -> Placement:
    if options.torch_threads:
        torch.set_num_threads(options.torch_threads)
    if options.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(options.device)
        except RuntimeError as e:
            raise load_error(f"Unknown device {options.device!r}: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise load_error(f"Device {options.device!r} was asked for but torch sees no CUDA device.")
    if options.dtype != "auto":
        dtype = _DTYPES[options.dtype]
    elif device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif bf16_on_cpu and cpu_has_bf16():
        # Measured here (README, Benchmarks): bf16 decodes faster than fp32 at every batch size on
        # a CPU with native bf16 (AVX512-BF16 / AMX): 25 vs 17 tok/s alone, 271 vs 120 at 16.
        dtype = torch.bfloat16
    else:
        dtype = torch.float32
    return Placement(device, dtype)


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls on this CPU (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def quantization_config(options: LoadOptions, placement: Placement) -> Any | None:
    if options.quantization == "none":
        return None
    if placement.device.type != "cuda":
        raise load_error(
            f"{options.quantization} quantization uses bitsandbytes, which needs a CUDA device; "
            f"this worker runs on {placement.device.type}. Load without quantization or on a GPU worker."
        )
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except Exception as e:  # noqa: BLE001 - any import failure means the same thing to the operator
        raise load_error(f"bitsandbytes is not usable here ({e}); install the `quant` extra on a CUDA machine.") from None
    if options.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=placement.dtype,
        bnb_4bit_use_double_quant=True,
    )


def gguf_file(folder: Path) -> str | None:
    """The GGUF file to load when the folder has no transformers config of its own."""
    if (folder / "config.json").is_file():
        return None
    files = sorted(folder.glob("*.gguf"))
    if len(files) > 1:
        raise load_error(f"{folder} holds several GGUF files ({', '.join(f.name for f in files)}); keep one per folder.")
    return files[0].name if files else None


def load_causal_lm(folder: Path, options: LoadOptions) -> tuple[Any, Any, Placement]:
    """(model, tokenizer, placement) for a chat/completion model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placement = choose_placement(options)
    kwargs: dict[str, Any] = {}
    gguf = gguf_file(folder)
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        qconfig = quantization_config(options, placement)
        if qconfig is not None:
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=placement.dtype, quantization_config=qconfig, device_map={"": placement.device}, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=placement.dtype, **kwargs)
            model = model.to(placement.device)  # type: ignore[arg-type]  # transformers' stub types .to()
    except JobError:
        raise
    except Exception as e:  # noqa: BLE001
        raise load_error(f"Could not load {folder.name}: {type(e).__name__}: {e}") from e
    model.eval()
    if qconfig is None:
        cpu_linear.optimize(model, placement.device, placement.dtype, enabled=options.cpu_kernels)
    return model, tokenizer, placement
