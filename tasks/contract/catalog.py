"""The model catalog: which model folders exist under ``LLM/``. No torch, so the front can use it.

A model id is its folder path under the models directory, ``{vendor}/{model}``. Ids are resolved
only inside that directory: absolute paths and ``..`` are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tasks.contract.errors import JobError

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelFolder:
    id: str
    path: Path
    created: int

    @property
    def owned_by(self) -> str:
        return self.id.split("/", 1)[0]


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "config.json").is_file() or any(path.glob("*.gguf")))


def list_models(models_dir: Path) -> list[ModelFolder]:
    if not models_dir.is_dir():
        return []
    found = []
    for vendor in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for folder in sorted(p for p in vendor.iterdir() if not p.name.startswith(".")):
            if is_model_folder(folder):
                found.append(ModelFolder(f"{vendor.name}/{folder.name}", folder, int(folder.stat().st_mtime)))
    return found


def resolve(models_dir: Path, model_id: str) -> ModelFolder:
    """The folder of ``model_id``, or a 404 ``model_not_found`` :class:`JobError`."""
    if not isinstance(model_id, str) or not _ID_RE.match(model_id) or ".." in model_id.split("/"):
        raise JobError(
            f"The model `{model_id}` does not exist: model ids are `vendor/model` folders under the models directory.",
            status_code=404, type="invalid_request_error", code="model_not_found", param="model",
        )
    # The pattern already keeps the id inside models_dir; a folder that is a symlink to weights
    # elsewhere is the operator's choice and is followed.
    path = models_dir / model_id
    if not is_model_folder(path):
        raise JobError(
            f"The model `{model_id}` does not exist.",
            status_code=404, type="invalid_request_error", code="model_not_found", param="model",
        )
    return ModelFolder(model_id, path, int(path.stat().st_mtime))
