"""Teacher-relative and learned quality for the diffusion spaces: robust training with in-place
distillation, `teacher_distance` against the full network, and the `predicted` proxy with its
cross-validated predictor stored next to the checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nas import SearchSpec, resolve
from nas.proxies import (
    DEFAULT_PROXY,
    ProxyContext,
    ProxyError,
    QualityPredictor,
    available_proxies,
    default_proxy,
    find_predictor,
    fit_for_checkpoint,
    fit_predictor,
    get_proxy,
    predictor_path,
    spearman,
    supernet_run_dir,
)
from nas.proxies.supernet import TEACHER_BATCH
from nas.training import SupernetTrainer, TrainConfig, TrainingConfigError
from search_spaces import SearchSpace, get_space
from tests.nas.nas_testing import SMALL_OPTIONS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def unet() -> SearchSpace:
    return get_space("unet", **SMALL_OPTIONS["unet"])


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory, unet: SearchSpace) -> tuple[SupernetTrainer, Path]:
    """A small UNet supernet after 3 robust steps with 2 distilled subnets each, in its run directory."""
    root = tmp_path_factory.mktemp("supernets")
    config = TrainConfig(
        space="unet",
        options=dict(unet.options),
        steps=3,
        batch_size=2,
        distill_subnets=2,
        out_dir=supernet_run_dir(unet, root),
    )
    trainer = SupernetTrainer(config)
    seen: list[list[dict]] = []
    original = trainer.rule.step_configs
    trainer.rule.step_configs = lambda rng: seen.append(original(rng)) or seen[-1]  # type: ignore[method-assign]
    trainer.fit()
    trainer.seen = seen  # type: ignore[attr-defined]
    return trainer, root


def test_robust_distillation_trains_the_base_and_random_subnets_towards_its_prediction(
    distilled: tuple[SupernetTrainer, Path], unet: SearchSpace
) -> None:
    trainer, _ = distilled
    assert trainer.rule.describe()["distill_subnets"] == 2
    steps = trainer.seen  # type: ignore[attr-defined]
    assert len(steps) == 3 and all(len(configs) == 3 for configs in steps)
    assert all(configs[0] == unet.largest() for configs in steps)
    assert len({str(c) for configs in steps for c in configs[1:]}) > 1  # random students

    # One step by hand: the student's loss is its distance from the teacher's detached prediction.
    task, batch = trainer.task, trainer.task.train_batch(0, 2)
    trainer.supernet.eval()
    with torch.no_grad():
        trainer.supernet.activate(unet.largest())
        teacher = task.predict(trainer.supernet, batch)
        trainer.supernet.activate(unet.smallest())
        student = task.predict(trainer.supernet, batch)
    assert float(task.distill_loss(student, teacher)) == pytest.approx(float(F.mse_loss(student, teacher)))
    with torch.no_grad():
        trainer.supernet.activate(unet.largest())
        assert float(task.loss_of(teacher, batch)) == pytest.approx(float(task.loss(trainer.supernet, batch)))


def test_distillation_is_refused_where_it_cannot_apply(effv2_space: SearchSpace) -> None:
    with pytest.raises(TrainingConfigError, match="distill_subnets applies") as caught:
        SupernetTrainer(
            TrainConfig(space="efficientformerv2", options=dict(effv2_space.options), distill_subnets=1)
        )
    assert caught.value.field == "distill_subnets"
    with pytest.raises(TrainingConfigError, match="distill_subnets must be >= 0"):
        TrainConfig(space="unet", distill_subnets=-1).validate()


def test_teacher_distance_is_zero_for_the_teacher_and_grows_with_difference(
    distilled: tuple[SupernetTrainer, Path], unet: SearchSpace
) -> None:
    _, root = distilled
    context = ProxyContext(unet, supernet_dir=root)
    proxy = get_proxy("teacher_distance")
    assert proxy.direction == "minimize" and proxy.needs == "supernet"
    assert proxy.compute(context, unet.largest()) == pytest.approx(0.0, abs=1e-10)
    smallest = proxy.compute(context, unet.smallest())
    assert smallest > 0
    # The same value by hand, and in a second context (deterministic).
    teacher = context.supernet().supernet.extract(unet.largest()).eval()
    student = context.supernet().supernet.extract(unet.smallest()).eval()
    batch = context.task.held_out_batch(TEACHER_BATCH)
    with torch.no_grad():
        t, s = context.task.predict(teacher, batch), context.task.predict(student, batch)
    assert smallest == pytest.approx(float(((s - t) ** 2).mean() / (t**2).mean()), rel=1e-4)
    assert ProxyContext(unet, supernet_dir=root).memo == {}
    assert proxy.compute(ProxyContext(unet, supernet_dir=root), unet.smallest()) == pytest.approx(smallest)


def test_teacher_distance_is_for_diffusion_spaces_only(effv2_space: SearchSpace, unet: SearchSpace) -> None:
    assert "teacher_distance" in available_proxies(unet, supernet=True)
    assert "teacher_distance" not in available_proxies(unet, supernet=False)
    assert "teacher_distance" not in available_proxies(effv2_space, supernet=True)


def test_ridge_predictor_recovers_a_linear_target_and_reports_held_out_error(unet: SearchSpace) -> None:
    rng = np.random.default_rng(3)
    configs = [unet.sample(rng) for _ in range(40)]
    weights = np.linspace(-1.0, 1.0, len(unet.encode(configs[0])))
    targets = [float(np.exp(unet.encode(c) @ weights)) for c in configs]
    predictor = fit_predictor(unet, configs, targets, target="teacher_distance", folds=4)
    assert predictor.log_target and predictor.samples == 40 and predictor.alpha in (0.01, 0.1, 1.0)
    assert predictor.cv_spearman > 0.9
    fresh = [unet.sample(rng) for _ in range(10)]
    truth = [float(np.exp(unet.encode(c) @ weights)) for c in fresh]
    assert spearman(predictor.predict(unet, fresh).tolist(), truth) > 0.9
    # A target unrelated to the config cannot be predicted out of fold.
    noise = [float(v) for v in rng.permutation(targets)]
    assert fit_predictor(unet, configs, noise, target="t", folds=4).cv_spearman < 0.6
    with pytest.raises(ProxyError, match="at least 10 measured configs"):
        fit_predictor(unet, configs[:6], targets[:6], target="t", folds=5)


def test_predictor_features_are_named_stored_and_checked(unet: SearchSpace) -> None:
    rng = np.random.default_rng(5)
    configs = [unet.sample(rng) for _ in range(24)]
    macs = [float(unet.count(c)["macs"]) for c in configs]
    # A target that only the MAC count explains: the counting feature group recovers it by rank.
    by_macs = fit_predictor(
        unet, configs, [1e9 / m for m in macs], target="t", folds=3, feature_names=["log_macs"]
    )
    assert by_macs.features == ["log_macs"] and len(by_macs.coef) == 1
    assert by_macs.cv_spearman == pytest.approx(1.0)
    assert [d["target"] for d in by_macs.data] == pytest.approx([1e9 / m for m in macs])
    assert by_macs.data[0]["config"] == unet.canonicalize(configs[0])
    default = fit_predictor(unet, configs, [1e9 / m for m in macs], target="t", folds=3)
    assert default.features == ["encoding", "log_params", "log_macs"]
    assert len(default.coef) == len(unet.encode(configs[0])) + 2

    for wrong in (["magic"], [], ["log_macs", "log_macs"], ["teacher_distance"]):
        with pytest.raises(ProxyError, match="predictor features must be distinct names from"):
            fit_predictor(unet, configs, macs, target="t", folds=3, feature_names=wrong)
    with pytest.raises(ProxyError, match="'naswot' is a proxy: it needs a ProxyContext"):
        fit_predictor(unet, configs, macs, target="t", folds=3, feature_names=["naswot"])


def test_a_predictor_stored_before_features_were_named_reads_encoding_and_log_params(
    unet: SearchSpace, tmp_path: Path
) -> None:
    rng = np.random.default_rng(6)
    configs = [unet.sample(rng) for _ in range(12)]
    targets = [float(i + 1) for i in range(12)]
    old = fit_predictor(unet, configs, targets, target="t", folds=2, feature_names=["encoding", "log_params"])
    stored = {k: v for k, v in dataclasses.asdict(old).items() if k not in ("features", "data")}
    (tmp_path / "predictor.json").write_text(json.dumps(stored))
    loaded = QualityPredictor.load(tmp_path / "predictor.json")
    assert loaded.features == ["encoding", "log_params"]
    assert loaded.predict(unet, configs[:3]).tolist() == pytest.approx(
        old.predict(unet, configs[:3]).tolist()
    )


def test_predicted_proxy_is_offered_once_fitted_and_searches_can_use_it(
    distilled: tuple[SupernetTrainer, Path], unet: SearchSpace
) -> None:
    _, root = distilled
    assert "predicted" not in available_proxies(unet, supernet_dir=root)
    spec = SearchSpec(space="unet", space_options=dict(unet.options), objectives=["proxy:predicted"])
    with pytest.raises(Exception, match="nas supernet fit-predictor"):
        resolve(spec, [], supernet_dir=root)

    context = ProxyContext(unet, supernet_dir=root)
    predictor = fit_for_checkpoint(context, samples=12, folds=3)
    assert predictor.target == "teacher_distance" and predictor.samples == 12
    assert predictor.measure_seconds > 0 and -1 <= predictor.cv_spearman <= 1
    path = predictor_path(context.supernet().path)
    predictor.save(path)
    assert find_predictor(unet, root) == path
    assert QualityPredictor.load(path) == predictor

    assert available_proxies(unet, supernet_dir=root)["predicted"] == "minimize"
    assert resolve(spec, [], supernet_dir=root).objectives[0].name == "proxy:predicted"
    value = get_proxy("predicted").compute(ProxyContext(unet, supernet_dir=root), unet.smallest())
    assert value == pytest.approx(float(predictor.predict(unet, [unet.smallest()])[0]))

    # A zero-cost proxy as a feature: the proxy computes it in the searching context.
    with_naswot = fit_for_checkpoint(context, samples=8, folds=2, feature_names=["log_macs", "naswot"])
    with_naswot.save(path)
    fresh = ProxyContext(unet, supernet_dir=root)
    naswot = get_proxy("naswot").compute(fresh, unet.smallest())
    x = (
        np.array([np.log(unet.count(unet.smallest())["macs"]), naswot]) - with_naswot.mean
    ) / with_naswot.scale
    y = float(x @ np.asarray(with_naswot.coef) + with_naswot.intercept)
    expected = np.exp(y) if with_naswot.log_target else y
    assert get_proxy("predicted").compute(fresh, unet.smallest()) == pytest.approx(expected)


def test_default_proxy_follows_the_preference_list(monkeypatch: pytest.MonkeyPatch) -> None:
    # The measured defaults (docs/proxies.md): on the UNet the inherited subnet of a distilled supernet
    # after a few steps of its own ranks best, a short training from scratch where no supernet is.
    offered = ["params", "naswot", "supernet_loss", "teacher_distance", "predicted", "finetuned_loss"]
    assert default_proxy("unet", [*offered, "train_speed"]) == "finetuned_loss"
    assert default_proxy("unet", ["params", "macs", "naswot", "train_speed"]) == "train_speed"
    assert default_proxy("temporal", ["params", "train_speed", "train_speed_frozen"]) == "train_speed_frozen"
    assert default_proxy("unet", ["params", "macs", "naswot"]) == "params"
    assert default_proxy("efficientformerv2", ["params"]) == "params"
    assert default_proxy("no-such-space", ["naswot"]) == "params"
    # A list falls back to the first proxy offered, e.g. where no supernet is trained.
    monkeypatch.setitem(DEFAULT_PROXY, "unet", ["teacher_distance", "predicted", "naswot"])
    assert default_proxy("unet", ["params", "naswot", "teacher_distance"]) == "teacher_distance"
    assert default_proxy("unet", ["params", "naswot", "predicted"]) == "predicted"
    assert default_proxy("unet", ["params", "naswot"]) == "naswot"
    assert default_proxy("unet") == "teacher_distance"
