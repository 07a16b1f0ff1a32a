"""The front never imports torch: it must build and answer with torch unavailable."""

import subprocess
import sys
import textwrap

from tests.conftest import ROOT


def test_api_runs_with_torch_hidden(tiny_models):
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("torch", "transformers"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from fastapi.testclient import TestClient
        from api.app import create_app
        from tasks.contract.settings import Settings
        app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", models_dir=r"{tiny_models}"))
        with TestClient(app) as c:
            assert c.get("/health").json() == {{"status": "ok"}}
            r = c.get("/v1/models").json()
            print(r)
        assert not any(m.split(".")[0] in ("torch", "transformers") for m in sys.modules)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
