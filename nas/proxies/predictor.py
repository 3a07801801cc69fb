"""`proxy:predicted`: a quality predictor learned per space, as Once-for-All's accuracy predictor.

A `QualityPredictor` is a ridge regression from a subnet's *features* to a measured quality *target*
(by default `teacher_distance` for the diffusion spaces and `supernet_loss` elsewhere, both inherited
from the trained supernet; log-transformed when every value is positive). The features are named
groups: the space's config encoding (`SearchSpace.encode`), the log of the parameter count and the
log of the MAC count by default (all counted, so the predictor scores thousands of configs per
second once the space's blocks are counted), optionally the value of a zero-cost proxy (then each
prediction costs that proxy's evaluation). It is fitted on a few hundred seeded random configs
(`fit_for_checkpoint`, `nas supernet fit-predictor`), its ridge strength chosen by k-fold
cross-validation, and its features, training pairs and held-out error (out-of-fold RMSE, Spearman
and Kendall against the measured target) are stored with it, as JSON next to the supernet checkpoint
it was measured on (`predictor_path`). Searches offer `proxy:predicted` where that file exists.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.proxies._base import Proxy
from nas.proxies.context import ProxyContext
from nas.proxies.correlation import kendall, spearman
from nas.proxies.errors import ProxyError
from nas.proxies.registry import get_proxy, list_proxies, register_proxy
from nas.proxies.supernet_checkpoints import DEFAULT_SUPERNET_DIR, find_checkpoint, predictor_path
from search_spaces import Config, SearchSpace, config_id

#: Ridge strengths cross-validation chooses from (on standardised features).
ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
DEFAULT_SAMPLES = 200
DEFAULT_FOLDS = 5


def find_predictor(space: SearchSpace, supernet_dir: str | Path = DEFAULT_SUPERNET_DIR) -> Path | None:
    """The predictor next to the checkpoint `find_checkpoint` finds for `space`, if it was fitted
    for the space at its options."""
    checkpoint = find_checkpoint(space, supernet_dir)
    return None if checkpoint is None else predictor_for(space, checkpoint)


def predictor_for(space: SearchSpace, checkpoint: str | Path) -> Path | None:
    """The predictor next to `checkpoint` if there is one for `space` at its options."""
    path = predictor_path(checkpoint)
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return path if (stored.get("space"), stored.get("options")) == (space.name, dict(space.options)) else None


def default_target(space: SearchSpace) -> str:
    """`teacher_distance` where the space offers it (diffusion spaces), else `supernet_loss`."""
    return "teacher_distance" if get_proxy("teacher_distance").supports(space) else "supernet_loss"


#: Feature groups computed from the config alone (no network is built): its encoding
#: (`SearchSpace.encode`), the log of its parameter count and the log of its MACs.
COUNTING_FEATURES = ("encoding", "log_params", "log_macs")
#: What a predictor is fitted on unless told otherwise.
DEFAULT_FEATURES = ("encoding", "log_params", "log_macs")


def check_features(space: SearchSpace, names: list[str] | tuple[str, ...]) -> list[str]:
    """`names` as a list if each is a counting feature group or a zero-cost proxy of `space` (its
    value is the feature: the predictor then costs that proxy's evaluation); `ProxyError` otherwise."""
    allowed = list(COUNTING_FEATURES) + [
        name
        for name in list_proxies()
        if get_proxy(name).needs == "batch" and get_proxy(name).supports(space)
    ]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names or len(set(names)) != len(names):
        raise ProxyError(
            f"predictor features must be distinct names from {allowed} (counting groups and the zero-cost "
            f"proxies of space {space.name!r}); got {list(names)}"
        )
    return list(names)


def features(
    space: SearchSpace,
    configs: list[Config],
    names: list[str] | tuple[str, ...] = DEFAULT_FEATURES,
    context: ProxyContext | None = None,
) -> np.ndarray:
    """One row per config: the named feature groups side by side (`context` computes proxy features)."""
    rows = []
    for config in configs:
        canonical = space.canonicalize(config)
        row: list[float] = []
        for name in names:
            if name == "encoding":
                row.extend(space.encode(canonical).astype(np.float64).tolist())
            elif name == "log_params":
                row.append(math.log(max(sum(spec.params for spec in space.blocks(canonical)), 1)))
            elif name == "log_macs":
                row.append(math.log(max(space.count(canonical)["macs"], 1)))
            else:
                if context is None:
                    raise ProxyError(f"the predictor's feature {name!r} is a proxy: it needs a ProxyContext")
                row.append(float(get_proxy(name).compute(context, canonical)))
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)


@dataclass
class QualityPredictor:
    """A fitted ridge regression and what it was fitted on; `predict` gives the target's scale."""

    space: str
    options: dict[str, Any]
    target: str
    log_target: bool
    alpha: float
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    samples: int
    folds: int
    #: Out-of-fold error of the chosen ridge strength, on the target's own scale and by rank.
    cv_rmse: float
    cv_spearman: float
    cv_kendall: float
    target_range: list[float]
    checkpoint: str = ""
    checkpoint_step: int | None = None
    measure_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: The feature groups, in order (a predictor stored before they were named used these two).
    features: list[str] = field(default_factory=lambda: ["encoding", "log_params"])
    #: The measured training pairs: `{"config": ..., "target": ...}` per subnet.
    data: list[dict[str, Any]] = field(default_factory=list)

    def predict(
        self, space: SearchSpace, configs: list[Config], context: ProxyContext | None = None
    ) -> np.ndarray:
        """The predicted target of each config (`context` where a feature is a proxy)."""
        x = (features(space, configs, self.features, context) - np.asarray(self.mean)) / np.asarray(
            self.scale
        )
        y = x @ np.asarray(self.coef) + self.intercept
        return np.exp(y) if self.log_target else y

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".partial")
        temporary.write_text(json.dumps(asdict(self), indent=1, sort_keys=True))
        temporary.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> QualityPredictor:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ProxyError(f"cannot read quality predictor {str(path)!r}: {exc}") from None


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Coefficients and intercept of ridge regression on already standardised `x`."""
    mean = float(y.mean())
    coef = np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ (y - mean))
    return coef, mean


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean, np.where(scale > 0, scale, 1.0)


def _out_of_fold(x: np.ndarray, y: np.ndarray, alpha: float, folds: list[np.ndarray]) -> np.ndarray:
    """Every sample's prediction by the ridge fitted on the other folds (standardised on them)."""
    out = np.empty_like(y)
    for held in folds:
        train = np.setdiff1d(np.arange(len(y)), held)
        mean, scale = _standardise(x[train])
        coef, intercept = _ridge((x[train] - mean) / scale, y[train], alpha)
        out[held] = ((x[held] - mean) / scale) @ coef + intercept
    return out


def fit_predictor(
    space: SearchSpace,
    configs: list[Config],
    targets: list[float],
    *,
    target: str,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    feature_names: list[str] | tuple[str, ...] = DEFAULT_FEATURES,
    context: ProxyContext | None = None,
) -> QualityPredictor:
    """Fit the predictor of `target` on measured `(config, target)` pairs and the feature groups
    `feature_names` (`check_features`; `context` computes proxy features), the ridge strength chosen
    by `folds`-fold cross-validation (seeded shuffled folds); its out-of-fold error and the pairs are
    stored with it."""
    names = check_features(space, feature_names)
    if len(configs) != len(targets) or len(configs) < max(folds, 3) * 2:
        raise ProxyError(
            f"fitting a predictor needs at least {max(folds, 3) * 2} measured configs for "
            f"{folds}-fold cross-validation, got {len(configs)}"
        )
    values = np.asarray(targets, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ProxyError(f"the measured {target} values include non-finite ones")
    log_target = bool(np.all(values > 0))
    y = np.log(values) if log_target else values
    x = features(space, configs, names, context)
    order = np.random.default_rng(seed).permutation(len(y))
    splits = np.array_split(order, folds)
    scores = {alpha: _out_of_fold(x, y, alpha, splits) for alpha in ALPHAS}
    alpha = min(ALPHAS, key=lambda a: float(np.mean((scores[a] - y) ** 2)))
    held_out = np.exp(scores[alpha]) if log_target else scores[alpha]
    mean, scale = _standardise(x)
    coef, intercept = _ridge((x - mean) / scale, y, alpha)
    return QualityPredictor(
        space=space.name,
        options=dict(space.options),
        target=target,
        log_target=log_target,
        alpha=alpha,
        mean=mean.tolist(),
        scale=scale.tolist(),
        coef=coef.tolist(),
        intercept=intercept,
        samples=len(y),
        folds=folds,
        cv_rmse=float(np.sqrt(np.mean((held_out - values) ** 2))),
        cv_spearman=spearman(held_out.tolist(), values.tolist()),
        cv_kendall=kendall(held_out.tolist(), values.tolist()),
        target_range=[float(values.min()), float(values.max())],
        features=names,
        data=[
            {"config": space.canonicalize(config), "target": float(value)}
            for config, value in zip(configs, values, strict=True)
        ],
    )


def sample_distinct(space: SearchSpace, count: int, seed: int, exclude: list[Config] = ()) -> list[Config]:
    """`count` distinct seeded random configs, none of `exclude` (fewer where the space is smaller)."""
    rng = np.random.default_rng(seed)
    seen = {config_id(space.canonicalize(c)) for c in exclude}
    out: list[Config] = []
    for _ in range(count * 50):
        config = space.sample(rng)
        key = config_id(config)
        if key not in seen:
            seen.add(key)
            out.append(config)
            if len(out) == count:
                break
    return out


def fit_for_checkpoint(
    context: ProxyContext,
    *,
    samples: int = DEFAULT_SAMPLES,
    target: str | None = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    exclude: list[Config] = (),
    feature_names: list[str] | tuple[str, ...] = DEFAULT_FEATURES,
) -> QualityPredictor:
    """Measure `target` (an inherited proxy; by default `default_target`) on `samples` seeded random
    configs of `context`'s space with its supernet, and fit the predictor on them and `feature_names`."""
    space = context.space
    check_features(space, feature_names)
    target = target or default_target(space)
    allowed = [
        name
        for name in list_proxies()
        if get_proxy(name).needs == "supernet" and get_proxy(name).direction == "minimize"
        and get_proxy(name).supports(space)
    ]  # fmt: skip
    if target not in allowed:
        raise ProxyError(
            f"a predictor learns an inherited loss-like proxy of space {space.name!r}; {target!r} is not "
            f"one; allowed targets: {allowed}"
        )
    proxy = get_proxy(target)
    loaded = context.supernet()
    configs = sample_distinct(space, samples, seed, exclude)
    start = time.perf_counter()
    targets = [proxy.compute(context, config) for config in configs]
    measured = time.perf_counter() - start
    predictor = fit_predictor(
        space,
        configs,
        targets,
        target=target,
        folds=folds,
        seed=seed,
        feature_names=feature_names,
        context=context,
    )
    predictor.checkpoint = str(loaded.path)
    predictor.checkpoint_step = loaded.step
    predictor.measure_seconds = measured
    return predictor


@register_proxy
class Predicted(Proxy):
    name = "predicted"
    direction = "minimize"
    needs = "predictor"
    cost = "counting"
    description = (
        "the space's learned quality predictor (ridge on named features, by default the config "
        "encoding, log params and log MACs, fitted on inherited teacher_distance or supernet_loss "
        "values): predicts that target, smaller is better"
    )

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        if "predictor" not in context.memo:
            checkpoint = context.supernet_checkpoint or find_checkpoint(context.space, context.supernet_dir)
            path = None if checkpoint is None else predictor_for(context.space, checkpoint)
            if path is None:
                raise ProxyError(
                    f"no quality predictor for space {context.space.name!r} at options "
                    f"{context.space.options}; run `nas supernet fit-predictor` first"
                )
            context.memo["predictor"] = QualityPredictor.load(path)
        return float(context.memo["predictor"].predict(context.space, [config], context)[0])
