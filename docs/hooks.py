"""MkDocs hooks: pages generated at build time from the code and the committed reports.

- ``api/<module>.md``: one page per public module, a ``::: name`` block (mkdocstrings) for every
  name in the module's ``__all__``. A name already documented on an earlier page (``resode``
  re-exports the solvers and schemes) is linked there instead of rendered twice. The build fails
  if a public name has no docstring.
- ``experiments/``: the gallery (``experiments/README.md``) and, per experiment, its README, its
  committed ``REPORT.md`` and ``plots/``.
- ``benchmarks.md``: ``benchmarks/RESULTS.md`` with its plots.

Links from these pages to repository files that are not part of the site (code, configs) become
plain text naming the path, so the strict build checks every link that remains.
"""

from __future__ import annotations

import importlib
import inspect
import posixpath
import re
from pathlib import Path

try:  # the page generators also run without mkdocs (the test suite imports them)
    from mkdocs.exceptions import PluginError
except ImportError:  # pragma: no cover
    PluginError = RuntimeError

ROOT = Path(__file__).resolve().parents[1]

#: (module, title, one-line description) of every API page, in navigation order.
API_MODULES = [
    ("resode", "resode", "schemes, stepping and fixed points: the pure functions on pytrees"),
    ("resode.schemes", "resode.schemes", "Butcher tableaux, order conditions, stability"),
    ("resode.stepping", "resode.stepping", "one step or a whole scan of any scheme"),
    ("resode.solvers", "resode.solvers", "fixed-point solvers, adjoints and the custom VJP"),
    ("resode.nn", "resode.nn", "equinox layers: fields, stacks, DEQ, ODE block, classifiers"),
    ("resode.nn.nnx", "resode.nn.nnx", "flax.nnx interop"),
    ("resode.analysis", "resode.analysis", "spectral norms, stability plots, gradient flow"),
    ("resode.robust", "resode.robust", "adversarial attacks and calibration metrics"),
    ("resode.data", "resode.data", "embedded datasets and batch indices"),
    ("resode.config", "resode.config", "typed configs, safe YAML, overrides"),
    ("resode.train", "resode.train", "the compiled training loop, runs, checkpoints"),
    ("resode.sweep", "resode.sweep", "sweep blocks, points and run directories"),
    ("resode.report", "resode.report", "tables, CSV and plots of finished runs"),
    ("resode.experiments", "resode.experiments", "claims that check themselves"),
]

REPORT_ANCHOR = "the-committed-report-reportmd"
#: Sections of the API pages, in reading order; names of a module's ``__all__`` not listed here
#: follow in a last section, so no public name is ever left out.
API_SECTIONS = {
    "resode": [
        (
            "Schemes",
            ["list_schemes", "get_scheme", "Scheme", "ButcherTableau", "stability_function"],
        ),
        ("Stepping", ["step", "integrate", "StepStats"]),
        (
            "Reversible stepping",
            [
                "reversible_integrate",
                "reversible_rebuild",
                "AbstractReversibleMethod",
                "Momentum",
                "Leapfrog",
                "ReversibleHeun",
                "ReverseStep",
            ],
        ),
        ("Fixed points", ["fixed_point", "FixedPointSolution", "backward_probe", "BackwardStats"]),
        ("Solvers", ["AbstractFixedPointSolver", "Picard", "Anderson", "Broyden", "Newton"]),
        ("Adjoints", ["AbstractAdjoint", "ImplicitAdjoint", "JFB", "Phantom", "Unrolled"]),
        (
            "Monotone equilibria",
            [
                "monotone_fixed_point",
                "AbstractMonotoneLinear",
                "DenseMonotone",
                "ConvMonotone",
                "AbstractSplitting",
                "PeacemanRachford",
                "ForwardBackward",
            ],
        ),
    ],
    "resode.nn": [
        ("Bodies", ["ResidualStack", "DEQ", "MonotoneDEQ", "ODEBlock", "Diagnostics"]),
        (
            "Fields",
            [
                "AbstractVectorField",
                "MLPField",
                "ConvField",
                "AttentionField",
                "GraphField",
                "DissipativeField",
                "FunctionField",
                "conv_same",
                "normalized_laplacian",
                "soft_threshold",
                "MONOTONE_ACTIVATIONS",
            ],
        ),
        (
            "Spectral normalisation",
            [
                "update_spectral_state",
                "buffer_mask",
                "conv_symbol_norm",
                "SPECTRAL_METHODS",
            ],
        ),
        ("Adapters", ["add_adapters", "remove_adapters", "adapter_mask", "AdaptedField"]),
        (
            "Models",
            [
                "build_classifier",
                "count_params",
                "Classifier",
                "SequenceClassifier",
                "Stem",
                "BODIES",
                "STEMS",
            ],
        ),
    ],
    "resode.train": [
        (
            "Training",
            ["train_run", "Trainer", "TrainState", "fit", "FitResult", "build_model", "seed_keys"],
        ),
        ("Checkpoints", ["save_checkpoint", "load_checkpoint", "latest_checkpoint"]),
    ],
    "resode.data": [
        ("Loading", ["list_datasets", "load", "Dataset", "batch_indices", "fingerprint"]),
    ],
    "resode.config": [
        ("Loading and saving", ["load_config", "load_typed", "save_config", "validate"]),
        ("The schema", ["Config", "DataConfig", "ModelConfig", "BodyConfig", "TrainConfig"]),
    ],
    "resode.experiments": [
        ("Checks", ["exact_check", "empirical_check", "Check", "checks_table", "verdict"]),
        ("Running", ["run_experiment", "list_experiments", "load_experiment", "Context", "Result"]),
        (
            "Helpers",
            [
                "seed_list",
                "spread",
                "fmt_spread",
                "fit_config",
                "fit_seeds",
                "held_out_accuracy",
                "max_param_change",
                "to_float64",
            ],
        ),
    ],
}

_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _api_page_name(module: str) -> str:
    return f"api/{module}.md"


def _public_names(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        raise PluginError(f"docs: module {module_name} has no __all__ (its public names).")
    return list(names)


def api_pages() -> dict[str, str]:
    """{page path: markdown} of the API reference."""
    seen: dict[int, str] = {}  # id(object) -> "module.name" where it is documented
    pages = {}
    for module_name, title, description in API_MODULES:
        module = importlib.import_module(module_name)
        lines = [f"# `{title}`", "", description[0].upper() + description[1:] + ".", ""]
        if inspect.getdoc(module):  # the module docstring, its cross-references resolved
            lines += [
                f"::: {module_name}",
                "    options:",
                "      members: false",
                "      show_root_heading: false",
                "",
            ]
        rendered, linked, submodules = [], [], []
        for name in _public_names(module_name):
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                submodules.append(obj.__name__)
                continue
            key = id(obj) if (inspect.isclass(obj) or callable(obj)) else None
            if key is not None and key in seen:
                linked.append((name, seen[key]))
                continue
            if key is not None:
                seen[key] = f"{module_name}.{name}"
            rendered.append(name)
        if submodules:
            lines += [
                "Submodules: "
                + ", ".join(f"[`{m}`]({posixpath.basename(_api_page_name(m))})" for m in submodules)
                + ".",
                "",
            ]
        if linked:
            lines += [
                "Also exported here, documented where they first appear: "
                + ", ".join(f"[`{name}`][{target}]" for name, target in linked)
                + ".",
                "",
            ]
        sections = [
            (t, [n for n in names if n in rendered])
            for t, names in API_SECTIONS.get(module_name, [])
        ]
        listed = {n for _, names in sections for n in names}
        rest = [n for n in rendered if n not in listed]
        if rest:
            sections.append(("More" if sections else "Public names", rest))
        for heading, names in sections:
            lines += [f"## {heading}", ""]
            for name in names:
                lines += [f"::: {module_name}.{name}", ""]
        pages[_api_page_name(module_name)] = "\n".join(lines)
    return pages


def check_docstrings() -> list[str]:
    """Public names (in the API modules' ``__all__``) without a docstring, as griffe sees them."""
    import griffe

    missing = []
    packages = {}
    for module_name, _, _ in API_MODULES:
        top = module_name.split(".")[0]
        if top not in packages:
            packages[top] = griffe.load(top, search_paths=[str(ROOT)], resolve_aliases=True)
        module = packages[top]
        for part in module_name.split(".")[1:]:
            module = module.members[part]
        for name in _public_names(module_name):
            obj = module.members.get(name)
            if obj is None:
                missing.append(f"{module_name}.{name} (not found by griffe)")
                continue
            target = obj.final_target if obj.is_alias else obj
            if target.is_module:
                continue
            if not (target.docstring and target.docstring.value.strip()):
                missing.append(f"{module_name}.{name}")
    return missing


def _rewrite_links(text: str, page: str, site_files: set[str], repo_dir: str) -> str:
    """Keep links to pages and images of the site; make links to other repository files text.

    `page` is the page's path in the site, `repo_dir` the directory (relative to the repository)
    its source came from, so that relative links can be resolved in the repository.
    """

    def repl(m):
        bang, label, target = m.groups()
        if re.match(r"^[a-z]+:|^#", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        site_target = posixpath.normpath(posixpath.join(posixpath.dirname(page), path))
        index = posixpath.join(posixpath.dirname(site_target), "index.md")
        base = posixpath.basename(site_target)
        if base in ("README.md", "REPORT.md") and index in site_files:
            # an experiment's README and REPORT are one page (the report is its last section)
            new = posixpath.join(posixpath.dirname(path), "index.md")
            anchor = REPORT_ANCHOR if base == "REPORT.md" else anchor
            new += f"#{anchor}" if anchor else ""
            return f"{bang}[{label}]({new})"
        if site_target in site_files:
            return m.group(0)
        repo_path = posixpath.normpath(posixpath.join(repo_dir, path))
        if bang:
            raise PluginError(f"docs: {page}: image {target!r} is not in the site")
        return f"{label} (`{repo_path}`)" if label.strip("`") != repo_path else label

    return _LINK.sub(repl, text)


def experiment_sources() -> dict[str, dict[str, Path]]:
    """{name: {"README.md": path, "REPORT.md": path, plots...}} of the committed experiments."""
    out = {}
    for d in sorted((ROOT / "experiments").iterdir()):
        if d.is_dir() and (d / "README.md").is_file():
            out[d.name] = {"README.md": d / "README.md"}
            if (d / "REPORT.md").is_file():
                out[d.name]["REPORT.md"] = d / "REPORT.md"
            for png in sorted((d / "plots").glob("*.png")) if (d / "plots").is_dir() else []:
                out[d.name][f"plots/{png.name}"] = png
    return out


def _demote_headings(text: str) -> str:
    """One level down (the page's own title stays the only h1)."""
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)


def experiment_pages() -> tuple[dict[str, str], dict[str, Path]]:
    """({page: markdown}, {site path: image file}) of the experiment gallery."""
    sources = experiment_sources()
    images = {}
    for name, files in sources.items():
        for rel, path in files.items():
            if rel.startswith("plots/"):
                images[f"experiments/{name}/{rel}"] = path
    for png in sorted((ROOT / "experiments").glob("*.png")):
        images[f"experiments/{png.name}"] = png
    pages = {f"experiments/{name}/index.md": "" for name in sources}
    site_files = set(pages) | set(images) | {"experiments/index.md"}
    gallery = (ROOT / "experiments" / "README.md").read_text()
    pages["experiments/index.md"] = _rewrite_links(
        gallery, "experiments/index.md", site_files, "experiments"
    )
    for name, files in sources.items():
        page = f"experiments/{name}/index.md"
        text = files["README.md"].read_text()
        if "REPORT.md" in files:
            report = files["REPORT.md"].read_text()
            text += "\n\n---\n\n## The committed report (`REPORT.md`)\n\n" + _demote_headings(
                report.split("\n", 1)[1] if report.startswith("# ") else report
            )
        text = text.replace("](REPORT.md)", f"](#{REPORT_ANCHOR})")
        pages[page] = _rewrite_links(text, page, site_files, f"experiments/{name}")
    return pages, images


def benchmark_page() -> tuple[dict[str, str], dict[str, Path]]:
    images = {f"benchmarks/{p.name}": p for p in sorted((ROOT / "benchmarks").glob("*.png"))}
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    text = re.sub(r"\]\((?!https?:)([^)/]+\.png)\)", r"](benchmarks/\1)", text)
    page = "benchmarks.md"
    site = set(images) | {page}
    return {page: _rewrite_links(text, page, site, "benchmarks")}, images


def on_config(config):
    nav = config["nav"]
    experiments = [{name: f"experiments/{name}/index.md"} for name in experiment_sources()]
    api = [{title: _api_page_name(module)} for module, title, _ in API_MODULES]
    for i, entry in enumerate(nav):
        if isinstance(entry, dict) and "Experiments" in entry:
            nav[i] = {"Experiments": [{"Gallery": "experiments/index.md"}, *experiments]}
        if isinstance(entry, dict) and "Reference" in entry:
            ref = [e for e in entry["Reference"] if "API" not in e]
            nav[i] = {"Reference": [*ref, {"API": api}]}
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    missing = check_docstrings()
    if missing:
        raise PluginError("docs: public names without a docstring: " + ", ".join(missing))
    pages = api_pages()
    exp_pages, images = experiment_pages()
    bench_pages, bench_images = benchmark_page()
    pages.update(exp_pages)
    pages.update(bench_pages)
    images.update(bench_images)
    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    for path, src in images.items():
        files.append(File.generated(config, path, abs_src_path=str(src)))
    return files
