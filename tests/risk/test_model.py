"""Risk models: trained with LightGBM, scored by Puhui's own tree kernel (equal to LightGBM's),
saved and loaded with their version and metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puhui.risk._model import (
    ModelFileError,
    ModelMetrics,
    RiskModel,
    TrainingDataError,
    auc,
    train,
)


def _data(rows: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(4, 1, rows)
    new_device = (rng.random(rows) < 0.1).astype(np.float64)
    noise = rng.normal(size=rows)
    night = (rng.random(rows) < 0.2).astype(np.float64)
    risk = 0.002 * amount + 3 * new_device + night + rng.normal(scale=0.5, size=rows)
    labels = (risk > 3.5).astype(np.int8)
    return {"amount": amount, "device.new": new_device, "noise": noise, "night": night}, labels


@pytest.fixture(scope="module")
def model() -> RiskModel:
    features, labels = _data(6_000)
    return train(features, labels, seed=1, rounds=60)


def test_a_model_learns_the_drivers_and_reports_held_out_metrics(model: RiskModel) -> None:
    m = model.metrics
    assert m.rows > 0 and 0 < m.positives < m.rows
    assert m.auc > 0.95
    assert 0.5 < m.precision_at_500 <= 1.0 and 0.5 < m.recall_at_500 <= 1.0
    features, labels = _data(3_000, seed=9)  # fresh data the model never saw
    assert auc(labels, model.score(features)) > 0.95
    top = model.explain({k: v[labels == 1][:20] for k, v in features.items()})
    assert all(reasons and reasons[0][0] in ("device.new", "amount") for reasons in top)


def test_the_kernel_equals_lightgbm_also_on_missing_values_and_zeros(model: RiskModel) -> None:
    features, _ = _data(2_000, seed=3)
    features["amount"][::7] = np.nan
    features["noise"][::5] = 0.0
    features["device.new"][::11] = np.nan
    booster = lgb.Booster(model_str=model.model_text)
    expected = booster.predict(model.matrix(features), raw_score=True)
    assert np.allclose(model.raw(features), expected, rtol=0, atol=1e-9)
    scores = model.score(features)
    assert scores.dtype == np.int32 and scores.min() >= 0 and scores.max() <= 1000


def test_save_and_load_keep_scores_version_and_metrics(model: RiskModel, tmp_path: Path) -> None:
    path = tmp_path / "models" / "m.json"
    model.save(path)
    again = RiskModel.load(path)
    features, _ = _data(500, seed=4)
    assert again.version == model.version and again.metrics == model.metrics
    assert again.feature_names == model.feature_names
    assert np.array_equal(again.score(features), model.score(features))
    assert not list(path.parent.glob("*.tmp"))


def test_broken_model_files_are_refused(model: RiskModel, tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    with pytest.raises(ModelFileError, match="no model file"):
        RiskModel.load(path)
    path.write_text("not json")
    with pytest.raises(ModelFileError, match="not readable"):
        RiskModel.load(path)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ModelFileError, match="is not a"):
        RiskModel.load(path)
    model.save(path)
    document = json.loads(path.read_text())
    document["model"] = document["model"].replace("learning_rate", "learning_rate ", 1)
    path.write_text(json.dumps(document))
    with pytest.raises(ModelFileError, match="altered"):
        RiskModel.load(path)
    assert ModelFileError.code == "risk_model_invalid"


def test_missing_features_are_an_input_error(model: RiskModel) -> None:
    with pytest.raises(Exception, match="features missing") as caught:
        model.score({"amount": np.ones(3)})
    assert getattr(caught.value, "code", "") == "invalid_input"


def test_unusable_training_data_is_refused() -> None:
    features, labels = _data(200)
    with pytest.raises(TrainingDataError):
        train(features, np.zeros_like(labels))  # one class only
    with pytest.raises(TrainingDataError):
        train({k: v[:10] for k, v in features.items()}, labels[:10])  # too few rows
    with pytest.raises(TrainingDataError):
        train({"a": np.ones(100)}, np.ones(99))  # shapes differ
    with pytest.raises(TrainingDataError):
        train(features, labels, holdout=1.5)
    assert TrainingDataError.code == "risk_training_data_invalid"


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=30).filter(
        lambda rows: len({r[0] for r in rows}) == 2
    )
)
def test_auc_is_the_share_of_correctly_ordered_pairs(rows: list[tuple[bool, int]]) -> None:
    labels = [r[0] for r in rows]
    scores = [r[1] for r in rows]
    pos = [s for y, s in rows if y]
    neg = [s for y, s in rows if not y]
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert auc(labels, scores) == pytest.approx(sum(pairs) / len(pairs))


def test_contributions_add_up_to_the_raw_score(model: RiskModel) -> None:
    from puhui.risk._model import _contributions

    features, _ = _data(300, seed=5)
    x = model.matrix(features)
    f = model._forest
    contrib = np.zeros((x.shape[0], len(model.feature_names)))
    _contributions(
        x, f.feature, f.threshold, f.left, f.right, f.missing, f.default_left,
        f.leaf_value, f.roots, f.node_value, contrib,
    )  # fmt: skip
    bias = sum(f.node_value[r] if r >= 0 else f.leaf_value[~r] for r in f.roots)
    assert np.allclose(contrib.sum(axis=1) + bias, model.raw(features), atol=1e-9)


def _lightgbm_decision(value: float, threshold: float, missing: int, default_left: bool) -> bool:
    """LightGBM's ``NumericalDecision`` (tree.h), plainly: True when the row goes left."""
    if math.isnan(value) and missing != 2:  # missing type None or Zero: NaN counts as 0
        value = 0.0
    if (missing == 1 and -1e-35 <= value <= 1e-35) or (missing == 2 and math.isnan(value)):
        return default_left
    return value <= threshold


def test_every_split_sends_every_kind_of_value_where_lightgbm_does() -> None:
    from puhui.risk._model import _contributions, _Forest, _raw_scores

    values = [math.nan, 0.0, -0.0, 1e-36, -1e-36, 1e-30, -1e-30, 0.5, -0.5, 2.0, -2.0, math.inf]
    x = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    for missing in (0, 1, 2):
        for default_left in (True, False):
            for threshold in (-1.0, -1e-36, 0.0, 1e-36, 0.25, 1.0):
                # One tree, one split: leaf 0 (left) is worth 1, leaf 1 (right) 10.
                forest = _Forest(
                    feature=np.zeros(1, np.int32),
                    threshold=np.asarray([threshold]),
                    left=np.asarray([~0], np.int32),
                    right=np.asarray([~1], np.int32),
                    missing=np.asarray([missing], np.int8),
                    default_left=np.asarray([default_left]),
                    leaf_value=np.asarray([1.0, 10.0]),
                    roots=np.zeros(1, np.int32),
                    node_value=np.asarray([4.0]),
                )
                f = forest
                raw = np.empty(len(values))
                _raw_scores(
                    x, f.feature, f.threshold, f.left, f.right, f.missing, f.default_left,
                    f.leaf_value, f.roots, raw,
                )  # fmt: skip
                contrib = np.zeros((len(values), 1))
                _contributions(
                    x, f.feature, f.threshold, f.left, f.right, f.missing, f.default_left,
                    f.leaf_value, f.roots, f.node_value, contrib,
                )  # fmt: skip
                expected = [
                    1.0 if _lightgbm_decision(v, threshold, missing, default_left) else 10.0
                    for v in values
                ]
                case = (missing, default_left, threshold)
                assert raw.tolist() == expected, case
                assert (contrib[:, 0] + 4.0).tolist() == expected, case


def test_the_kernel_equals_lightgbm_when_zero_counts_as_missing() -> None:
    features, labels = _data(3_000, seed=4)
    features["noise"][::3] = 0.0
    features["amount"][::5] = 0.0
    names = sorted(features)
    x = np.column_stack([features[name] for name in names])
    params = {"objective": "binary", "zero_as_missing": True, "verbose": -1, "seed": 1}
    booster = lgb.train(params, lgb.Dataset(x, labels, feature_name=names), 30)
    model = RiskModel(booster.model_to_string(), names, ModelMetrics(0, 0, 0.5, 0.0, 0.0))
    assert (model._forest.missing == 1).any()  # splits of missing type Zero are exercised
    test, _ = _data(2_000, seed=8)
    test["noise"][::4] = 0.0
    test["amount"][::6] = np.nan
    test["night"][::9] = 1e-36
    expected = booster.predict(model.matrix(test), raw_score=True)
    assert np.allclose(model.raw(test), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("rows", [1, 5, 64, 65, 300])
def test_the_input_matrix_is_the_features_as_float64_columns(model: RiskModel, rows: int) -> None:
    features: dict[str, np.ndarray] = dict(_data(rows, seed=rows)[0])
    features["device.new"] = features["device.new"] > 0  # bool, int and float columns alike
    features["night"] = features["night"].astype(np.int64)
    features["amount"][::3] = np.nan
    x = model.matrix(features)
    expected = np.column_stack([features[name].astype(np.float64) for name in model.feature_names])
    assert x.dtype == np.float64 and x.flags.c_contiguous and x.shape == (rows, 4)
    assert np.array_equal(x, expected, equal_nan=True)
