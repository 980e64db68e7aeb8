"""The documentation site: every ```python block of every page runs, page by page, in order.

A reader runs a page's blocks top to bottom (later blocks use names defined earlier), in a scratch
directory holding a copy of the configs. The site's build (`make docs`, `mkdocs build --strict`)
is checked by CI; here: the pages exist, the navigation names them, and the API pages cover every
public name.
"""

import importlib
import importlib.util
import inspect
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
BLOCKS = {p: re.findall(r"```python\n(.*?)```", (DOCS / p).read_text(), flags=re.S) for p in PAGES}


@pytest.mark.parametrize("page", [p for p in PAGES if BLOCKS[p]])
def test_page_code_blocks_run_in_order(page, tmp_path, monkeypatch):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESODE_CACHE", str(tmp_path / "cache"))
    namespace = {"__name__": f"docs_{page}"}
    for index, block in enumerate(BLOCKS[page]):
        exec(compile(block, f"{page} python block {index}", "exec"), namespace)


def test_guides_and_concepts_have_code_that_runs():
    for page in ("index.md", "concepts/depth.md", "guides/models.md", "guides/extend.md"):
        assert len(BLOCKS[page]) >= 1, page


def test_navigation_names_every_written_page():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        assert page in nav, f"docs/{page} is not in mkdocs.yml's nav"


def _hooks():
    spec = importlib.util.spec_from_file_location("resode_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_pages_cover_every_public_name():
    hooks = _hooks()
    pages = hooks.api_pages()
    text = "\n".join(pages.values())
    for module_name, _, _ in hooks.API_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if inspect.ismodule(getattr(module, name)):
                continue
            rendered = f"::: {module_name}.{name}\n" in text
            linked = f"[`{name}`][" in pages[f"api/{module_name}.md"]
            assert rendered or linked, f"{module_name}.{name} is not on an API page"


def test_every_public_function_and_class_has_its_own_docstring():
    """(Constants are checked by the site build, which reads attribute docstrings with griffe.)"""
    missing = []
    for module_name, _, _ in _hooks().API_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = obj.__doc__ or ""
            generated = inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(")  # dataclass
            if not doc.strip() or generated:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"public names without a docstring: {missing}"
