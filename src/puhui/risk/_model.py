"""Risk models: gradient-boosted trees (LightGBM) trained on labelled history, scored by a
numba kernel over the trees' arrays.

LightGBM trains the model; scoring does not call LightGBM: the trees are flattened into
arrays once (``_Forest``) and a numba kernel walks them, several times faster than
``Booster.predict`` on small and large batches alike and equal to it (the tests compare raw
scores). A model file is one JSON document: the LightGBM model text, the feature names in
order, the metrics measured on the held-out part of the training data and a version (the
SHA-256 of the model text), written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from puhui.errors import InvalidInputError, PuhuiError

from ._workers import worker

SCORE_MAX: Final = 1000
MODEL_FORMAT: Final = "puhui-risk-model/1"
ZERO_THRESHOLD: Final = 1e-35
"""LightGBM's ``kZeroThreshold``: |x| at or below it counts as zero for ``missing_type`` Zero."""
_MISSING_NONE, _MISSING_ZERO, _MISSING_NAN = 0, 1, 2
TRAIN_ROWS_MIN: Final = 50
_ROW_WISE_ROWS_MAX: Final = 64
"""Up to this many rows, ``RiskModel.matrix`` converts all columns at once (unit: rows)."""
PARALLEL_ROWS_MIN: Final = 2048
"""From this many rows on, the trees are walked on two threads, half the rows each (the
kernels release the GIL; each row's result is computed exactly as on one thread)."""


class ModelFileError(PuhuiError):
    """A model file that cannot be read: missing, not JSON, another format, or altered."""

    code = "risk_model_invalid"


class TrainingDataError(InvalidInputError):
    """Training data that cannot give a model (too few rows, one class only, bad shapes)."""

    code = "risk_training_data_invalid"


@dataclass(frozen=True, slots=True)
class _Forest:
    """Every tree's nodes in flat arrays. Node ``n``: ``feature[n]`` and ``threshold[n]``
    decide, ``left[n]``/``right[n]`` point at the next node, or at leaf ``~child`` when
    negative; ``roots[t]`` is tree ``t``'s first node (``~leaf`` for a one-leaf tree)."""

    feature: npt.NDArray[np.int32]
    threshold: npt.NDArray[np.float64]
    left: npt.NDArray[np.int32]
    right: npt.NDArray[np.int32]
    missing: npt.NDArray[np.int8]
    default_left: npt.NDArray[np.bool_]
    leaf_value: npt.NDArray[np.float64]
    roots: npt.NDArray[np.int32]
    node_value: npt.NDArray[np.float64]
    """Each internal node's value (the mean output of the rows that reached it in training)."""


def _flatten(dump: Mapping[str, Any]) -> _Forest:
    feature: list[int] = []
    threshold: list[float] = []
    left: list[int] = []
    right: list[int] = []
    missing: list[int] = []
    default_left: list[bool] = []
    leaves: list[float] = []
    roots: list[int] = []
    values: list[float] = []

    def walk(node: Mapping[str, Any]) -> int:
        if "leaf_value" in node or "split_feature" not in node:
            leaves.append(float(node.get("leaf_value", 0.0)))
            return ~(len(leaves) - 1)
        if node.get("decision_type", "<=") != "<=":
            raise ModelFileError("only numerical splits (<=) are supported")
        index = len(feature)
        feature.append(int(node["split_feature"]))
        threshold.append(float(node["threshold"]))
        missing.append({"None": _MISSING_NONE, "Zero": _MISSING_ZERO, "NaN": _MISSING_NAN}[
            str(node.get("missing_type", "None"))
        ])  # fmt: skip
        default_left.append(bool(node.get("default_left", True)))
        values.append(float(node.get("internal_value", 0.0)))
        left.append(0)
        right.append(0)
        left[index] = walk(node["left_child"])
        right[index] = walk(node["right_child"])
        return index

    for tree in dump["tree_info"]:
        roots.append(walk(tree["tree_structure"]))
    return _Forest(
        feature=np.asarray(feature, dtype=np.int32),
        threshold=np.asarray(threshold, dtype=np.float64),
        left=np.asarray(left, dtype=np.int32),
        right=np.asarray(right, dtype=np.int32),
        missing=np.asarray(missing, dtype=np.int8),
        default_left=np.asarray(default_left, dtype=np.bool_),
        leaf_value=np.asarray(leaves, dtype=np.float64),
        roots=np.asarray(roots, dtype=np.int32),
        node_value=np.asarray(values, dtype=np.float64),
    )


def _by_rows(kernel: Any, x: Any, out: Any, *arrays: Any, parallel: bool = True) -> None:
    """``kernel(x, *arrays, out)`` over all rows, split in two halves on two threads when the
    batch is large and ``parallel`` (rows are independent: the outputs are the same)."""
    rows = x.shape[0]
    if rows < PARALLEL_ROWS_MIN or not parallel:
        kernel(x, *arrays, out)
        return
    half = rows // 2
    second = worker("risk-model-rows").submit(_walk, kernel, x[half:], out[half:], arrays)
    try:
        _walk(kernel, x[:half], out[:half], arrays)
    finally:
        wait([second])
    second.result()  # its error, if any


def _walk(kernel: Any, x: Any, out: Any, arrays: tuple[Any, ...]) -> None:
    kernel(x, *arrays, out)


def _compiled(function: Callable[..., Any]) -> Any:
    """Compile with numba (nopython, cached on disk, the GIL released)."""
    from numba import njit

    return njit(cache=True, nogil=True)(function)


def _raw_scores_py(
    x: Any,
    feature: Any,
    threshold: Any,
    left: Any,
    right: Any,
    missing: Any,
    default_left: Any,
    leaf_value: Any,
    roots: Any,
    out: Any,
) -> None:
    """The sum of every tree's leaf for each row (the raw score, log-odds)."""
    for row in range(x.shape[0]):
        total = 0.0
        for t in range(roots.shape[0]):
            node = roots[t]
            while node >= 0:
                # LightGBM's numerical decision (``NumericalDecision`` in its tree.h), written
                # out here: an njit helper taking the arrays costs 20 times the step itself.
                value = x[row, feature[node]]
                if value <= threshold[node]:
                    if missing[node] != _MISSING_ZERO or abs(value) > ZERO_THRESHOLD:
                        node = left[node]
                        continue
                elif not math.isnan(value):
                    if missing[node] != _MISSING_ZERO or abs(value) > ZERO_THRESHOLD:
                        node = right[node]
                        continue
                elif missing[node] == _MISSING_NONE:  # NaN counts as 0.0
                    node = left[node] if threshold[node] >= 0.0 else right[node]
                    continue
                node = left[node] if default_left[node] else right[node]
            total += leaf_value[~node]
        out[row] = total


_raw_scores = _compiled(_raw_scores_py)


def _contributions_py(  # pragma: no cover - compiled
    x: Any,
    feature: Any,
    threshold: Any,
    left: Any,
    right: Any,
    missing: Any,
    default_left: Any,
    leaf_value: Any,
    roots: Any,
    node_value: Any,
    out: Any,
) -> None:
    """Per row and feature, how much the splits on that feature moved the raw score along
    the row's paths (Saabas' decomposition: each step adds child value - node value)."""
    for row in range(x.shape[0]):
        for t in range(roots.shape[0]):
            node = roots[t]
            while node >= 0:
                value = x[row, feature[node]]  # the step of _raw_scores_py, written out
                if value <= threshold[node]:
                    if missing[node] != _MISSING_ZERO or abs(value) > ZERO_THRESHOLD:
                        child = left[node]
                    else:
                        child = left[node] if default_left[node] else right[node]
                elif not math.isnan(value):
                    if missing[node] != _MISSING_ZERO or abs(value) > ZERO_THRESHOLD:
                        child = right[node]
                    else:
                        child = left[node] if default_left[node] else right[node]
                elif missing[node] == _MISSING_NONE:  # NaN counts as 0.0
                    child = left[node] if threshold[node] >= 0.0 else right[node]
                else:
                    child = left[node] if default_left[node] else right[node]
                after = leaf_value[~child] if child < 0 else node_value[child]
                out[row, feature[node]] += after - node_value[node]
                node = child


_contributions = _compiled(_contributions_py)


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """Measured on the held-out rows of the training data."""

    rows: int
    positives: int
    auc: float
    precision_at_500: float
    """Precision of ``score >= 500``."""
    recall_at_500: float

    def as_json(self) -> dict[str, float | int]:
        return {
            "rows": self.rows,
            "positives": self.positives,
            "auc": self.auc,
            "precision_at_500": self.precision_at_500,
            "recall_at_500": self.recall_at_500,
        }


class RiskModel:
    """A trained model: scores 0-1000 (the fraud probability times 1000, rounded)."""

    def __init__(
        self, model_text: str, feature_names: Sequence[str], metrics: ModelMetrics
    ) -> None:
        import lightgbm as lgb

        self.model_text = model_text
        self.feature_names = tuple(feature_names)
        self.metrics = metrics
        self.version = hashlib.sha256(model_text.encode()).hexdigest()[:16]
        self._booster = lgb.Booster(model_str=model_text)
        if self._booster.num_feature() != len(self.feature_names):
            raise ModelFileError("the model's feature count differs from its feature names")
        self._forest = _flatten(self._booster.dump_model())

    def matrix(self, features: Mapping[str, npt.ArrayLike]) -> npt.NDArray[np.float64]:
        """The model's input: one float64 column per feature, in the model's order."""
        missing = [name for name in self.feature_names if name not in features]
        if missing:
            raise InvalidInputError(f"features missing for the model: {', '.join(missing[:5])}")
        columns = [features[name] for name in self.feature_names]
        if not columns:
            return np.zeros((0, 0))
        if len(np.asarray(columns[0])) <= _ROW_WISE_ROWS_MAX:
            # A handful of events (one at a time): one conversion of the whole list, then a
            # small transpose, is a fifth of the cost of converting column by column.
            return np.ascontiguousarray(np.array(columns, dtype=np.float64).T)
        return np.ascontiguousarray(
            np.column_stack([np.asarray(column, dtype=np.float64) for column in columns])
        )

    def raw(
        self, features: Mapping[str, npt.ArrayLike], *, parallel: bool = True
    ) -> npt.NDArray[np.float64]:
        """Log-odds per row (the sum of the trees' leaves; ``parallel``: a large batch's trees
        are walked on two threads)."""
        x = self.matrix(features)
        out = np.empty(x.shape[0], dtype=np.float64)
        f = self._forest
        _by_rows(
            _raw_scores, x, out, f.feature, f.threshold, f.left, f.right, f.missing,
            f.default_left, f.leaf_value, f.roots, parallel=parallel,
        )  # fmt: skip
        return out

    def score(
        self, features: Mapping[str, npt.ArrayLike], *, parallel: bool = True
    ) -> npt.NDArray[np.int32]:
        """Scores 0-1000 per row (``parallel``: as for ``raw``)."""
        raw = self.raw(features, parallel=parallel)
        probability = 1.0 / (1.0 + np.exp(-raw))
        return np.rint(probability * SCORE_MAX).astype(np.int32)

    def explain(
        self, features: Mapping[str, npt.ArrayLike], top: int = 3, *, parallel: bool = True
    ) -> list[list[tuple[str, float]]]:
        """The ``top`` features that pushed each row's score up most (log-odds each added,
        by Saabas' decomposition of the trees' paths: as fast as scoring; ``parallel``: as for
        ``raw``)."""
        x = self.matrix(features)
        if x.shape[0] == 0:
            return []
        f = self._forest
        contrib = np.zeros((x.shape[0], len(self.feature_names)), dtype=np.float64)
        _by_rows(
            _contributions, x, contrib, f.feature, f.threshold, f.left, f.right, f.missing,
            f.default_left, f.leaf_value, f.roots, f.node_value, parallel=parallel,
        )  # fmt: skip
        k = min(top, contrib.shape[1])
        order = np.argsort(-contrib, axis=1)[:, :k]
        # The picks' values gathered at once and read back as Python floats (per-row numpy
        # scalars cost more than the trees' walk).
        picked: list[list[float]] = np.take_along_axis(contrib, order, axis=1).tolist()
        names = self.feature_names
        return [
            [(names[i], round(v, 4)) for i, v in zip(picks, values, strict=True) if v > 0]
            for picks, values in zip(order.tolist(), picked, strict=True)
        ]

    # --- files ----------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        document = {
            "format": MODEL_FORMAT,
            "version": self.version,
            "feature_names": list(self.feature_names),
            "metrics": self.metrics.as_json(),
            "model": self.model_text,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            json.dump(document, out)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> RiskModel:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelFileError(f"no model file at {path}") from None
        except (OSError, ValueError) as error:
            raise ModelFileError(f"model file {path} is not readable JSON: {error}") from None
        if not isinstance(document, dict) or document.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"{path} is not a {MODEL_FORMAT} file")
        try:
            metrics = ModelMetrics(**document["metrics"])
            model = cls(str(document["model"]), list(document["feature_names"]), metrics)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"model file {path} is incomplete: {error}") from None
        if model.version != document.get("version"):
            raise ModelFileError(f"model file {path} was altered (version does not match)")
        return model


def auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def train(
    features: Mapping[str, npt.ArrayLike],
    labels: npt.ArrayLike,
    *,
    seed: int = 0,
    rounds: int = 100,
    leaves: int = 15,
    holdout: float = 0.2,
) -> RiskModel:
    """Train a model on labelled rows (label 1: fraud); ``holdout`` of the rows, drawn at
    random (seeded), are kept out of training to measure the metrics."""
    import lightgbm as lgb

    names = sorted(features)
    y = np.asarray(labels, dtype=np.int8)
    columns = [np.asarray(features[name], dtype=np.float64) for name in names]
    if not names or any(c.shape != y.shape for c in columns) or y.ndim != 1:
        raise TrainingDataError("every feature column must have one value per label")
    if len(y) < TRAIN_ROWS_MIN or y.min() == y.max():
        raise TrainingDataError(
            f"need at least {TRAIN_ROWS_MIN} rows and both labels; got {len(y):,} rows,"
            f" {int(np.count_nonzero(y)):,} of them labelled 1"
        )
    if not 0.0 < holdout < 1.0:
        raise TrainingDataError("holdout must be between 0 and 1")
    x = np.column_stack(columns)
    rng = np.random.default_rng(seed)
    test = rng.random(len(y)) < holdout
    if y[~test].min() == y[~test].max() or test.sum() == 0:
        test[:] = False
        test[rng.choice(len(y), size=max(1, int(len(y) * holdout)), replace=False)] = True
    params = {
        "objective": "binary",
        "num_leaves": leaves,
        "learning_rate": 0.1,
        "min_data_in_leaf": 20,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.9,
        "bagging_freq": 1,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 2,
        "verbose": -1,
    }
    booster = lgb.train(params, lgb.Dataset(x[~test], y[~test], feature_name=names), rounds)
    text = booster.model_to_string()
    placeholder = ModelMetrics(0, 0, float("nan"), 0.0, 0.0)
    model = RiskModel(text, names, placeholder)
    held = {name: x[test, k] for k, name in enumerate(names)}
    scores = model.score(held)
    truth = y[test].astype(bool)
    flagged = scores >= SCORE_MAX // 2
    metrics = ModelMetrics(
        rows=int(test.sum()),
        positives=int(truth.sum()),
        auc=auc(truth, scores),
        precision_at_500=float(truth[flagged].mean()) if flagged.any() else 0.0,
        recall_at_500=float(flagged[truth].mean()) if truth.any() else 0.0,
    )
    return RiskModel(text, names, metrics)
