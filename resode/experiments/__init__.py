"""Experiments that check their own claims.

Each experiment (a folder ``experiments/<name>/`` of the checkout) states a claim from the
chapters resode starts from, measures it and reports [`Check`][] records: **exact** checks
(identities and bounds whose expected values come from the run's own parameters; a failure is a
bug, exit status 1) and **empirical** ones (claims measured over several seeds, reported as
found). ``resode experiment list | run NAME | run --all | gallery`` drive them; this module is the
shared machinery (check records, seeds and spreads, plots, summaries, reports, the gallery).
"""

from ._check import (
    Check,
    empirical_check,
    exact_check,
    fit_config,
    fit_seeds,
    fmt_spread,
    held_out_accuracy,
    jsonable,
    max_param_change,
    require_at_least_one,
    require_subset,
    seed_list,
    spread,
    to_float64,
)
from ._plots import plot_series
from ._runner import (
    Context,
    Result,
    checks_table,
    cpu_description,
    experiment_config,
    experiments_dir,
    gallery_text,
    list_experiments,
    load_experiment,
    machine,
    run_experiment,
    verdict,
    write_gallery,
)

__all__ = [
    "Check",
    "Context",
    "Result",
    "checks_table",
    "cpu_description",
    "empirical_check",
    "exact_check",
    "experiment_config",
    "experiments_dir",
    "fit_config",
    "fit_seeds",
    "fmt_spread",
    "gallery_text",
    "jsonable",
    "list_experiments",
    "load_experiment",
    "machine",
    "max_param_change",
    "require_at_least_one",
    "require_subset",
    "plot_series",
    "run_experiment",
    "seed_list",
    "spread",
    "held_out_accuracy",
    "to_float64",
    "verdict",
    "write_gallery",
]
