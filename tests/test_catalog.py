"""Model ids resolve only to folders inside the models directory."""

import pytest

from tasks.contract.catalog import list_models, resolve
from tasks.contract.errors import JobError
from tests.conftest import MINILM, ROOT, SMOL, TINY_CHATML


def test_lists_vendor_model_folders(tiny_models):
    ids = [m.id for m in list_models(tiny_models)]
    assert TINY_CHATML in ids and SMOL in ids and MINILM in ids
    assert ids == sorted(ids)


@pytest.mark.parametrize("bad", ["../etc", "/etc/passwd", "acme/../acme/tiny-chatml", "acme", "acme/tiny-chatml/..",
                                 "acme/nope", "", "a/b/c"])
def test_refuses_ids_outside_or_missing(tiny_models, bad):
    with pytest.raises(JobError) as e:
        resolve(tiny_models, bad)
    assert e.value.status_code == 404 and e.value.code == "model_not_found"


def test_gguf_only_folder_is_a_model(tmp_path):
    (tmp_path / "v" / "m").mkdir(parents=True)
    (tmp_path / "v" / "m" / "weights.gguf").write_bytes(b"GGUF")
    assert [m.id for m in list_models(tmp_path)] == ["v/m"]


def test_default_folders_are_the_checkouts():
    """`make run` and `make test` put models in ./LLM and state in ./.state, whatever module the
    settings live in."""
    from tasks.contract.settings import Settings

    s = Settings(_env_file=None, models_dir="LLM", state_dir=".state")
    assert s.models_dir == ROOT / "LLM" and s.state_dir == ROOT / ".state"
    fields = Settings.model_fields
    assert fields["models_dir"].default == ROOT / "LLM" and fields["state_dir"].default == ROOT / ".state"
