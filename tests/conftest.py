"""Shared fixtures (a small synthetic cohort on disk, generated once per test session) and the
one list of slow tests that ``make test-fast`` leaves out (``-m "not slow"``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")  # tests never open windows

from ecgcmr.synth.cohort import cohort_spec, generate_cohort  # noqa: E402

TINY_N = 16

#: Tests marked ``slow`` at collection: the notebook series and grids, training runs,
#: cohort-scale statistics and new processes. ``make test`` runs them, ``make test-fast`` does
#: not. An entry is a test file or a test (all its parameter sets). Chosen from measured
#: durations, keeping at least one fast test per file: benchmarks/measured/*test-suite*.md.
#: This list is the whole slow set (no test file marks itself).
SLOW: tuple[str, ...] = (
    # the notebook series and grids under papermill
    "tests/test_notebooks.py::test_notebook_series_runs_on_the_tiny_profile",
    "tests/test_notebooks.py::test_a_grid_reuses_the_cohort_skips_finished_cells_and_survives_a_failing_one",
    "tests/test_notebooks.py::test_notebook_05_reanalyses_the_committed_comparison_and_a_run_without_alignment",
    "tests/test_cli.py::test_pretrain_and_embed_commands",
    "tests/test_runs.py::test_a_grid_runs_its_cells_in_process_with_a_log_each",
    "tests/test_html_report.py::test_grid_report_links_every_cell_and_the_overview",
    "tests/test_ecg_only.py::test_notebooks_03_and_04_evaluate_an_ecg_only_cohort_with_an_encoder_trained_elsewhere",
    # training runs
    "tests/test_pretraining.py::test_the_three_stages_end_to_end",
    "tests/test_pretrained.py::test_a_set_holds_every_stage_its_methods_need_with_a_card_from_its_record",
    "tests/test_pretrained.py::test_the_cards_metrics_are_what_the_shipped_files_measure",
    "tests/test_pretrained.py::test_stage_c_retrained_from_the_shipped_files_repeats_its_logged_first_steps",
    "tests/test_pretrained.py::test_another_configuration_is_refused_and_a_missing_one_is_not_found",
    "tests/test_pretrained.py::test_shipped_sets_reproduce_their_validation_metrics_on_the_regenerated_cohort",
    "tests/test_train.py::test_ddp_on_gloo_keeps_the_ranks_identical",
    "tests/test_models.py::test_tiny_vit_fits_a_tiny_regression_task",
    "tests/test_trunk_cache.py::test_stage_c_trains_identically_with_and_without_the_trunk_cache",
    "tests/test_workers.py::test_stage_b_weights_are_the_same_with_0_and_1_workers",
    "tests/test_speed_options.py::test_compile_blocks_compiles_every_block_and_cmr_encoder_only",
    "tests/test_eval_phenotypes.py::test_finetune_head_learns_what_a_frozen_random_encoder_cannot",
    "tests/test_eval_phenotypes.py::test_label_efficiency_tidy_and_improving",
    "tests/test_eval_outcomes.py::test_balanced_classification_learns_a_real_signal",
    "tests/test_predict.py::test_predict_writes_a_row_per_recording_equal_to_the_probe",
    "tests/test_predict.py::test_the_head_is_the_probe_and_is_tied_to_its_encoder",
    "tests/test_predict.py::test_a_bad_record_gets_a_qc_row_and_the_others_are_predicted",
    "tests/test_convert_public_cmr.py::test_a_cmr_only_collection_trains_stage_a_and_never_enters_an_ecg_stage",
    # the benchmark scripts end to end
    "tests/test_benchmarks.py::test_preprocessing",
    "tests/test_benchmarks.py::test_data_pipeline",
    "tests/test_benchmarks.py::test_train_step",
    "tests/test_benchmarks.py::test_memory",
    "tests/test_benchmarks.py::test_train_step_modes_and_encoder_alone",
    "tests/test_benchmarks.py::test_memory_stand_in_rows",
    "tests/test_benchmarks.py::test_convergence",
    "tests/test_benchmarks.py::test_evaluation",
    # cohort-scale statistics of the synthetic world
    "tests/test_cohort_honesty.py",
    "tests/test_synth_ecg.py::test_measured_heart_rate_is_the_state_rate",
    "tests/test_synth_ecg.py::test_measured_intervals_match_the_state",
    "tests/test_synth_ecg.py::test_intervals_fall_in_clinical_ranges",
    "tests/test_synth_ecg.py::test_af_subjects_have_no_p_wave",
    "tests/test_synth_ecg.py::test_frontal_axis_mostly_normal",
    "tests/test_synth_ecg.py::test_voltages_match_clinical_norms",
    "tests/test_synth_ecg.py::test_r_wave_progression",
    "tests/test_synth_ecg.py::test_sokolow_higher_in_hypertrophy",
    "tests/test_synth_ecg.py::test_qrs_voltage_falls_with_bmi_at_fixed_mass",
    "tests/test_synth_ecg.py::test_qrs_voltage_grows_with_lv_mass",
    "tests/test_synth_ecg.py::test_women_have_smaller_precordial_voltages_at_equal_mass",
    "tests/test_synth_ecg.py::test_electrical_axis_follows_the_anatomical_axis",
    "tests/test_synth_ecg.py::test_hypertrophy_with_strain_flattens_or_inverts_lateral_t",
    "tests/test_systolic_coupling.py::test_at_zero_the_ecg_is_the_same_whatever_the_lvef",
    "tests/test_systolic_coupling.py::test_at_zero_lvef_does_not_move_the_heart_rate_given_ed_anatomy",
    "tests/test_ceilings.py::test_fast_path_gives_the_cohorts_subjects",
    "tests/test_ceilings.py::test_table_shape",
    "tests/test_ceilings.py::test_ecg_estimate_equals_direct_computation",
    "tests/test_ceilings.py::test_readout_equals_direct_computation",
    "tests/test_ceilings.py::test_cmr_ceiling_is_measured_against_truth",
    "tests/test_ceilings.py::test_outcomes_get_auroc",
    "tests/test_ceilings.py::test_upper_bound_above_ecg_estimate_on_average",
    "tests/test_ceilings.py::test_misaligned_inputs_are_refused",
    "tests/test_ceilings.py::test_inputs_from_cohort_reads_every_subject",
    # a paper-size model; a cohort through the real file formats
    "tests/test_models.py::test_vit_paper_parameter_count",
    "tests/test_manifest_builders.py::test_ukb_bulk_files_in_the_real_formats_become_a_cohort_the_pipeline_reads",
    # new processes: spawned ranks, subprocesses importing torch, process pools
    "tests/test_cohort.py::test_same_seed_same_cohort_whatever_the_workers",
    "tests/test_layers.py::test_profiles_load_without_the_generator_or_the_trainer",
    "tests/test_distributed.py::test_helpers_in_the_group",
    "tests/test_distributed.py::test_gathered_loss_and_gradients_equal_single_process",
    "tests/test_distributed.py::test_ddp_training_matches_single_process",
    "tests/test_cli.py::test_bad_manifest_is_a_message_not_a_traceback",
)


def _is_slow(nodeid: str, entry: str) -> bool:
    return nodeid == entry or nodeid.startswith((entry + "::", entry + "["))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of :data:`SLOW`; warn about an entry that names nothing collected."""
    used = set()
    for item in items:
        for entry in SLOW:
            if _is_slow(item.nodeid, entry):
                item.add_marker(pytest.mark.slow)
                used.add(entry)
    if config.option.keyword or any("::" in str(a) for a in config.args):
        return   # a chosen subset: entries outside it name nothing collected, rightly
    files = {item.nodeid.split("::")[0] for item in items}
    for entry in SLOW:
        if entry not in used and entry.split("::")[0] in files:
            warnings.warn(f"tests/conftest.py SLOW names no test: {entry}", stacklevel=1)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest path of a 16-subject tiny-profile cohort (read-only: copy before breaking)."""
    out = tmp_path_factory.mktemp("cohort")
    spec = cohort_spec("tiny", seed=7, n_subjects=TINY_N)
    return generate_cohort(out, spec, workers=1, progress=False)


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker() -> None:
    # pytest-xdist runs one worker per core: torch's own thread pool on top of that
    # oversubscribes the cores and made the training tests several times slower. Outside
    # xdist too, so that a test trains the same numbers however it is run (with 2 threads
    # the three-stage test's tiny training took another path and missed its retrieval bar)
    import torch

    torch.set_num_threads(1)
