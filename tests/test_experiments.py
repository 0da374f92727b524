"""The low-label study's plan: every row is a sweep the service accepts (each trial a valid job), the
rows are the README's, and each row runs the same seeds (the pairing is seed by seed)."""

from __future__ import annotations

from app.core import sweeps
from app.core.specs.sweeps import SweepSpec
from trainjobs.experiments import SCRATCH, Study, markers, table


def test_every_row_of_the_study_is_a_valid_sweep_over_the_same_seeds_gan_rows_included() -> None:
    study = Study("digits", 5, [100, 101, 102], epochs=None, gan_rows=True)
    rows = study.rows()
    assert next(iter(rows)) == SCRATCH and len(rows) == 10
    for name, body in rows.items():
        spec = SweepSpec.model_validate(body)
        trials, metric, higher = sweeps.plan(spec)
        assert metric == "test_accuracy" and higher, name
        assert [t.params["seed"] for t in trials] == [100, 101, 102], name
        final = trials[0].then or trials[0].spec
        assert final.dataset.labels_per_class == 5, name  # every row finetunes on the same labelled subsets
    gan = SweepSpec.model_validate(rows["DCGAN → its discriminator: linear probe"])
    trial = sweeps.plan(gan)[0][0]
    assert trial.spec.model.arch == "dcgan" and trial.then is not None
    assert trial.then.model.freeze_backbone and trial.then.dataset.input_shape() == (1, 32, 32)
    assert len(Study("digits", None, [0], gan_rows=False).rows()) == 6


def test_the_table_pairs_each_row_with_scratch_seed_by_seed() -> None:
    from trainjobs.experiments import Row

    rows = [Row(SCRATCH, {1: 0.80, 2: 0.90}), Row("better", {1: 0.85, 2: 0.88}), Row("lost one", {1: 0.9})]
    text = table(rows, [1, 2])
    assert "| better | 86.50% ± 2.12 | +1.5 (1/2 seeds better) |" in text
    assert "| lost one | 90.00% ± 0.00 | +10.0 (1/1 seeds better) |" in text
    assert markers(None) == ("<!-- low-label:all:start -->", "<!-- low-label:all:end -->")
