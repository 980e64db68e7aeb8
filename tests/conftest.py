import jax
import pytest

from resode.cli import quick_compile_flags

# The suite is compile-bound (thousands of small programs, each run a few times): it compiles
# with resode.cli.QUICK_XLA_FLAGS, set here before anything compiles: XLA's backend optimisation
# level 0 and XLA:CPU's elemental emitters (a setting already in XLA_FLAGS is kept, e.g.
# XLA_FLAGS="--xla_backend_optimization_level=3 --xla_cpu_use_fusion_emitters=true" to test the
# defaults). `make test` on 2 cores: 10 min 45 s at the default level, 5 min 10 s at level 0
# (2026-11-24); on 2026-12-05 (a slower machine, quickstart 5.0 s) 4 min 21 s with both flags.
# Tests that compare two differently structured programs bit for bit compile them with the
# default emitters (helpers.default_emitters).
quick_compile_flags()

# Precision tests (orders, finite differences) need float64; float32 tests use explicit dtypes.
jax.config.update("jax_enable_x64", True)

# Tests that took 9 s or more each in `make test` on the CI machine kind (2 CPU cores; durations
# measured 2026-11-24 with `pytest --durations`), and the experiment, documentation and
# command-line runs of 7.5 s or more: marked slow here, so that `make test` stays well
# under 15 minutes; `make test-slow` (run by CI after `make test`) runs them. Listed by node id
# (file::test[parameters]) so that single cases of a parametrised test can move. (Measured at
# XLA's default optimisation level; since the suite compiles at level 0 the quick experiment runs
# are back in `make test`, except the two of SLOW_QUICK in test_experiments.py.)
HEAVY = {
    "test_cli.py::test_run_accepts_overrides_before_and_after_options[argv1]",
    "test_docs.py::test_page_code_blocks_run_in_order[getting-started.md]",
    "test_docs.py::test_page_code_blocks_run_in_order[guides/extend.md]",
    "test_experiments.py::test_exact_checks_hold_for_other_parameters[deep_linear-overrides6]",
    "test_experiments.py::test_exact_checks_hold_for_other_parameters[identity_init-overrides0]",
    "test_adapters.py::test_adapted_model_starts_as_the_base_model[implicit-kw2]",
    "test_adapters.py::test_adapted_model_starts_as_the_base_model[residual-kw0]",
    "test_analysis.py::test_gradient_fidelity_of_approximate_adjoints",
    "test_analysis.py::test_gradient_flow_matches_autodiff[backward_euler-False]",
    "test_analysis.py::test_gradient_flow_matches_autodiff[euler-False]",
    "test_analysis.py::test_lipschitz_bound_bounds_the_residual_step",
    "test_cli.py::test_run_accepts_overrides_before_and_after_options[argv0]",
    "test_data.py::test_loading_needs_no_network",
    "test_docs.py::test_page_code_blocks_run_in_order[concepts/depth.md]",
    "test_docs.py::test_page_code_blocks_run_in_order[concepts/gradients.md]",
    "test_docs.py::test_page_code_blocks_run_in_order[guides/models.md]",
    "test_docs.py::test_page_code_blocks_run_in_order[index.md]",
    "test_experiments.py::test_exact_checks_hold_for_other_parameters[calibration_shrink-overrides14]",
    "test_experiments.py::test_exact_checks_hold_for_other_parameters[dead_zone-overrides11]",
    "test_experiments.py::test_exact_checks_hold_for_other_parameters[deep_linear-overrides5]",
    "test_experiments.py::test_exact_checks_hold_for_other_parameters[identity_init-overrides2]",
    "test_experiments.py::test_exact_checks_hold_for_other_parameters[implicit_stability-overrides7]",
    "test_experiments.py::test_exact_checks_hold_for_other_parameters[schrodinger-overrides8]",
    "test_experiments.py::test_exact_checks_hold_for_other_parameters[unrolled_deconvolution-overrides9]",
    "test_experiments.py::test_exact_checks_hold_for_other_parameters[wiener_denoising-overrides10]",
    "test_fit.py::test_reused_trainer_equals_a_fresh_one_for_the_same_seed",
    "test_fixed_point.py::test_anderson_matches_a_textbook_reference_step_by_step[9]",
    "test_fixed_point.py::test_backward_probe_reports_the_adjoint_solve",
    "test_fixed_point.py::test_implicit_matches_unrolled_at_full_convergence[anderson]",
    "test_fixed_point.py::test_implicit_matches_unrolled_at_full_convergence[broyden]",
    "test_fixed_point.py::test_implicit_matches_unrolled_at_full_convergence[newton]",
    "test_fixed_point.py::test_jfb_is_a_descent_direction_for_a_contractive_layer",
    "test_fixed_point.py::test_phantom_approaches_implicit_as_steps_grow",
    "test_gradients.py::test_gradients_through_closed_over_arrays[gauss_legendre4]",
    "test_gradients.py::test_implicit_gradients_match_an_unrolled_converged_solve[sdirk2]",
    "test_gradients.py::test_implicit_gradients_match_an_unrolled_converged_solve[trapezoid]",
    "test_gradients.py::test_per_step_args_gradients[trapezoid]",
    "test_graph.py::test_node_classifier_trains_on_labelled_nodes_only",
    "test_lipschitz.py::test_conv_field_respects_its_bound[exact-2-spatial0]",
    "test_lipschitz.py::test_power_state_of_a_stacked_field_is_per_step",
    "test_lipschitz.py::test_training_advances_the_power_state_and_never_optimises_it[mlp]",
    "test_models.py::test_every_body_kind_trains[ode]",
    "test_monotone.py::test_layer_runs_under_jit_and_grad_with_diagnostics[spatial1]",
    "test_monotone.py::test_margin_holds_for_random_parameters_and_matches_the_dense_matrix[0.3-0.05]",
    "test_monotone.py::test_vmap_shares_weights_and_sums_their_gradients",
    "test_nn.py::test_conv_same_matmul_equals_lax_convolution[2-shape2-3]",
    "test_nn.py::test_conv_same_matmul_equals_lax_convolution[2-shape3-2]",
    "test_nn.py::test_deq_gradients_match_finite_differences",
    "test_nn.py::test_implicit_stack_matches_the_core_values_and_gradients",
    "test_nn.py::test_ode_block_adjoints_agree[direct]",
    "test_nn.py::test_stack_diagnostics_are_true_counts",
    "test_precision.py::test_bfloat16_training_lowers_the_loss[residual]",
    "test_stepping.py::test_newton_line_search_solves_large_backward_euler_steps",
    "test_stepping.py::test_per_step_args_equals_a_python_loop_of_blocks[backward_euler]",
    "test_stepping.py::test_step_equals_single_step_integrate",
    "test_train.py::test_finished_run_is_not_retrained",
    "test_train.py::test_implicit_stack_backward_vjps_match_a_direct_count[backward_euler]",
    "test_train.py::test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint",
    "test_train.py::test_optimizers_and_schedules",
    "test_train.py::test_rerun_with_a_different_config_is_refused",
    "test_train.py::test_resume_equals_uninterrupted_bit_for_bit",
    "test_train.py::test_short_training_lowers_the_loss[deq-phantom]",
}


def pytest_collection_modifyitems(config, items):
    slow = pytest.mark.slow
    seen = set()
    for item in items:
        nodeid = item.nodeid.removeprefix("tests/")
        if nodeid in HEAVY:
            item.add_marker(slow)
            seen.add(nodeid)
    # On a whole-suite run every listed id must still name a test: a renamed test or a shifted
    # parameter id would otherwise fall back into `make test` unnoticed.
    if not config.option.file_or_dir and not config.option.keyword and seen != HEAVY:
        stale = sorted(HEAVY - seen)
        raise pytest.UsageError(f"tests/conftest.py HEAVY names no test: {', '.join(stale)}")
