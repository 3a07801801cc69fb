"""How well does each proxy rank subnets? Spearman's rho and Kendall's tau against trained ground truth.

For each space, `--subnets` distinct subnets are sampled at small options and each is trained from
scratch (seeded init, AdamW, a fixed number of steps and batch size; for EfficientFormerV2 the learning
rate is cosine-annealed to 0, `lr_schedule`) on the space's generated training data
(`nas.training.tasks`); the truth is its held-out accuracy (EfficientFormerV2, 100 generated classes) or
held-out denoising loss (UNet, timesteps spread over the schedule). A video subnet (temporal space)
trains only its temporal layers, on the trained image UNet of the UNet benchmark's supernet, frozen, as
SnapGen-V trains them (`truth_image_from`). Then every proxy available for the space scores every
subnet, timed, and so do the supernet-inherited proxies after the space's supernet is trained with
`nas.training` for `--supernet-steps` steps. Correlations are signed so that +1 means "ranks better
subnets higher" whatever the proxy's or the truth's direction. The diffusion spaces' supernets train
with in-place distillation (`supernet_distill` subnets a step), which `teacher_distance` reads; the
temporal supernet starts from the UNet benchmark's. Where a setup has `predictor_samples`, the
`predicted` proxy's predictor is fitted on that many other inherited subnets (none of the judged ones)
before scoring. Each space ends with the default proxy's (`proxy:default` at these options) rho and tau
beside `macs`, `params` and the inits' agreement (with `--truth-seeds 2`).

Ground truth (per subnet, written as each finishes, so an interrupted run resumes) and trained
supernets are cached under `--cache-dir` (default benchmarks/.cache), keyed by every setting that
changes them. The subnets of the truth train in `--jobs` worker processes (default: one per CPU),
each with one torch thread; a subnet's result does not depend on the process it trained in. The
supernets train in this process with `--jobs` torch threads. The proxies are scored and timed here,
one after another, with one torch thread (`--threads`), so their seconds are comparable.

    python benchmarks/proxy_correlation.py                      # every space, 30 subnets
    python benchmarks/proxy_correlation.py --spaces unet --subnets 12 --supernet-steps 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.proxies import (
    ProxyContext,
    ProxyError,
    QualityPredictor,
    available_proxies,
    default_proxy,
    fit_for_checkpoint,
    get_proxy,
    kendall,
    predictor_path,
    spearman,
)
from nas.proxies.predictor import DEFAULT_FEATURES
from nas.proxies.task_data import classification_output, is_classification
from nas.training import TrainConfig, latest_checkpoint, load_checkpoint, make_task, train_supernet
from nas.training.tasks import TrainingTask
from search_spaces import Config, SearchSpace, Supernet, config_id, get_space

#: Bumped when the truth's definition changes, so stale caches are not reused.
TRUTH_VERSION = 1
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"


@dataclass(frozen=True)
class SpaceSetup:
    """A space at small options and how its subnets (and its supernet) are trained for the truth."""

    space: str
    options: dict[str, Any]
    train_steps: int
    batch_size: int
    lr: float
    weight_decay: float
    held_out: int
    supernet_steps: int
    supernet_batch_size: int
    supernet_lr: float
    #: Random subnets per supernet step distilled from the full network (robust and temporal rules).
    supernet_distill: int = 0
    #: The space whose benchmark supernet this one starts from (temporal: the trained image UNet).
    supernet_init: str | None = None
    #: Inherited configs (none of the judged ones) the `predicted` proxy is fitted on; 0: not fitted.
    predictor_samples: int = 0
    #: Video spaces: the space whose benchmark supernet gives the trained image UNet that the truth's
    #: subnets keep frozen while their temporal layers train (SnapGen-V's setting); None: every weight
    #: of the subnet trains from scratch.
    truth_image_from: str | None = None
    #: The truth's learning rate over its steps: "constant", or "cosine" (annealed to 0 by the last
    #: step, so the held-out loss is not read off one noisy late minibatch's update).
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule {self.lr_schedule!r}: expected 'constant' or 'cosine'")

    def settings(self, seed: int, init_seed: int, image: str | None = None) -> dict[str, Any]:
        """Everything the cached truth depends on (`seed`: subnets and data; `init_seed`: weights;
        `image`: the checkpoint, run directory and step, of the frozen image UNet's supernet, if any)."""
        keep = ("space", "options", "train_steps", "batch_size", "lr", "weight_decay", "held_out")
        out = {"version": TRUTH_VERSION, "seed": seed, **{k: asdict(self)[k] for k in keep}}
        if self.lr_schedule != "constant":  # keeps the keys of constant-rate truths as they were
            out["lr_schedule"] = self.lr_schedule
        if image is not None:
            out["frozen_image"] = image
        return out if init_seed == seed else {**out, "init_seed": init_seed}


SETUPS: dict[str, SpaceSetup] = {
    "efficientformerv2": SpaceSetup(
        space="efficientformerv2",
        # 100 classes: with 10, every subnet reaches 100% within the budget and the truth has no ranking.
        options={"resolution": 32, "num_classes": 100, "heads": "classifier"},
        train_steps=60,
        batch_size=32,
        lr=2e-3,
        weight_decay=0.05,
        held_out=512,
        # At a constant rate two inits agreed at only +0.79 (loss) / +0.39 (accuracy), and more steps
        # or a larger batch made it worse; annealed, +0.92 / +0.77 (docs/proxies.md, 2026-12-06).
        lr_schedule="cosine",
        supernet_steps=120,
        supernet_batch_size=32,
        supernet_lr=2e-3,
    ),
    "unet": SpaceSetup(
        space="unet",
        options={"latent_size": 8, "text_tokens": 8, "cross_attention_dim": 64, "width_scale": 0.0625},
        train_steps=60,
        batch_size=16,
        lr=1e-3,
        weight_decay=0.01,
        held_out=256,
        supernet_steps=120,
        supernet_batch_size=16,
        supernet_lr=1e-3,
        supernet_distill=1,
        predictor_samples=200,
    ),
    # Two frames keep a video subnet about as cheap as the UNet's. As in SnapGen-V, the truth trains
    # only the temporal layers, on the trained image UNet of the UNet benchmark's supernet (frozen):
    # that is the question a temporal search answers. (Trained whole from scratch, with batch 4 two
    # inits agreed at only +0.75, with batch 16 at +0.82: docs/proxies.md, 2026-12-06.)
    "temporal": SpaceSetup(
        space="temporal",
        options={
            "frames": 2,
            "latent_size": 8,
            "text_tokens": 8,
            "cross_attention_dim": 64,
            "width_scale": 0.0625,
        },
        train_steps=60,
        batch_size=16,
        lr=1e-3,
        weight_decay=0.01,
        held_out=128,
        supernet_steps=80,
        supernet_batch_size=4,
        supernet_lr=1e-3,
        supernet_distill=1,
        supernet_init="unet",
        predictor_samples=200,
        truth_image_from="unet",
    ),
}


@dataclass
class ProxyResult:
    name: str
    needs: str
    cost: str
    direction: str
    values: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    failures: int = 0
    #: Rank correlations by truth ("accuracy", "loss"), signed so that +1 is a perfect proxy.
    spearman: dict[str, float] = field(default_factory=dict)
    kendall: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------- ground truth
def sample_configs(space: SearchSpace, count: int, seed: int) -> list[Config]:
    """`count` distinct canonical configs, uniformly sampled."""
    rng = np.random.default_rng(seed)
    configs: dict[str, Config] = {}
    for _ in range(count * 100):
        config = space.sample(rng)
        configs.setdefault(config_id(config), config)
        if len(configs) == count:
            return list(configs.values())
    raise ValueError(
        f"space {space.name!r} yielded only {len(configs)} distinct subnets in {count * 100} draws"
    )


def frozen_base(space: SearchSpace, task: TrainingTask, checkpoint: Path) -> Supernet:
    """The video space's supernet holding the trained image UNet of a UNet supernet's checkpoint, as
    supernet training's `init_from` loads it (`task.warm_start`); its `frozen_start` gives a subnet on
    that image UNet, frozen, with fresh temporal layers."""
    video = space.supernet()
    task.warm_start(video, load_checkpoint(checkpoint))
    return video


def train_from_scratch(
    space: SearchSpace,
    task: TrainingTask,
    config: Config,
    setup: SpaceSetup,
    seed: int,
    frozen: Supernet | None = None,
) -> dict[str, float]:
    """Train a freshly initialised subnet for the setup's budget; its held-out loss (and accuracy).
    With `frozen` (a video supernet holding a trained image UNet, `frozen_base`), the subnet starts
    from that image UNet, frozen, and only its temporal layers train."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (space.build(config) if frozen is None else frozen.frozen_start(config)).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=setup.lr, weight_decay=setup.weight_decay)
    schedule = None
    if setup.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=setup.train_steps)
    start = time.perf_counter()
    for step in range(setup.train_steps):
        loss = task.loss(model, task.train_batch(step, setup.batch_size))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        if schedule is not None:
            schedule.step()
    model.eval()
    held_out = task.held_out_batch(setup.held_out)
    with torch.no_grad():
        result = {"loss": float(task.loss(model, held_out))}
        if is_classification(task):
            logits, labels = classification_output(task, model, held_out)
            result["accuracy"] = float((logits.argmax(-1) == labels).float().mean())
    result["seconds"] = time.perf_counter() - start
    return result


def ground_truth(
    space: SearchSpace,
    task: TrainingTask,
    configs: list[Config],
    setup: SpaceSetup,
    init_seed: int,
    cache: Path,
    jobs: int = 1,
    image_checkpoint: Path | None = None,
) -> list[dict[str, float]]:
    """The truth of every config with weights initialised from `init_seed`, from the cache where
    present; the missing ones are trained in `jobs` processes and the cache is updated as each one
    finishes, so an interrupted run loses at most the subnets in training. `image_checkpoint`: the
    trained UNet supernet whose image UNet a video subnet keeps frozen (`truth_image_from`)."""
    image_key = (
        None if image_checkpoint is None else f"{image_checkpoint.parent.name}/{image_checkpoint.stem}"
    )
    settings = setup.settings(task.seed, init_seed, image_key)
    path = cache / f"proxy_truth-{space.name}-{config_id(settings)}.json"
    stored: dict[str, Any] = {"settings": settings, "subnets": {}}
    if path.exists():
        stored = json.loads(path.read_text())
    missing = [config for config in configs if config_id(config) not in stored["subnets"]]
    if missing:
        log(f"  training {len(missing)} of {len(configs)} subnets ({min(jobs, len(missing))} processes)")
    start = time.perf_counter()
    trained = _train_all(space, task, missing, setup, init_seed, jobs, image_checkpoint)
    for done, (config, truth) in enumerate(trained, 1):
        stored["subnets"][config_id(config)] = {"config": config, **truth}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".partial").write_text(json.dumps(stored, indent=1, sort_keys=True))
        path.with_suffix(".partial").replace(path)
        log(
            f"  truth {done}/{len(missing)}: {_truth_text(truth)} ({truth['seconds']:.1f}s; "
            f"{time.perf_counter() - start:.0f}s elapsed)"
        )
    return [stored["subnets"][config_id(config)] for config in configs]


def _train_all(
    space: SearchSpace,
    task: TrainingTask,
    configs: list[Config],
    setup: SpaceSetup,
    init_seed: int,
    jobs: int,
    image_checkpoint: Path | None = None,
) -> Iterator[tuple[Config, dict[str, float]]]:
    """`(config, truth)` for every config, in the order they finish."""
    if jobs <= 1 or len(configs) <= 1:
        frozen = None if image_checkpoint is None else frozen_base(space, task, image_checkpoint)
        for config in configs:
            yield config, train_from_scratch(space, task, config, setup, init_seed, frozen)
        return
    # Spawned workers import this file by its module name: make its folder importable (the children
    # inherit sys.path), whether it runs as a script or was loaded from elsewhere.
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(configs)), mp_context=context, initializer=_worker_init) as pool:
        futures = {
            pool.submit(_train_in_worker, setup, task.seed, init_seed, config, image_checkpoint): config
            for config in configs
        }
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


_WORKER_TASKS: dict[str, tuple[SearchSpace, TrainingTask]] = {}
_WORKER_FROZEN: dict[str, Supernet] = {}


def _worker_init() -> None:
    torch.set_num_threads(1)


def _train_in_worker(
    setup: SpaceSetup, seed: int, init_seed: int, config: Config, image_checkpoint: Path | None
) -> dict[str, float]:
    """`train_from_scratch` in a worker process, its space, task (and frozen base) built once per
    process."""
    key = json.dumps([setup.space, setup.options, seed], sort_keys=True)
    if key not in _WORKER_TASKS:
        space = get_space(setup.space, **setup.options)
        _WORKER_TASKS[key] = (space, make_task(space, seed))
    space, task = _WORKER_TASKS[key]
    frozen = None
    if image_checkpoint is not None:
        if str(image_checkpoint) not in _WORKER_FROZEN:
            _WORKER_FROZEN[str(image_checkpoint)] = frozen_base(space, task, image_checkpoint)
        frozen = _WORKER_FROZEN[str(image_checkpoint)]
    return train_from_scratch(space, task, config, setup, init_seed, frozen)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _truth_text(truth: dict[str, float]) -> str:
    text = f"held-out loss {truth['loss']:.4f}"
    return text + (f", accuracy {truth['accuracy']:.3f}" if "accuracy" in truth else "")


# ---------------------------------------------------------------------------- supernet
def trained_supernet(space: SearchSpace, setup: SpaceSetup, seed: int, cache: Path) -> Path:
    """A checkpoint of the space's supernet after `supernet_steps` steps (trained, or resumed after an
    interruption); a setup with `supernet_init` starts from that space's benchmark supernet (trained
    first). The step count is part of the cache key: a supernet trained longer (its learning-rate
    schedule spans its own steps) is never taken for a shorter one."""
    settings = {
        "space": space.name,
        "options": dict(space.options),
        "steps": setup.supernet_steps,
        "batch_size": setup.supernet_batch_size,
        "lr": setup.supernet_lr,
        "seed": seed,
    }
    if setup.supernet_distill:
        settings["distill_subnets"] = setup.supernet_distill
    init_from = None
    if setup.supernet_init is not None:
        init_setup = SETUPS[setup.supernet_init]
        init_space = get_space(init_setup.space, **init_setup.options)
        init_from = str(trained_supernet(init_space, init_setup, seed, cache))
        settings["init_from"] = Path(init_from).parent.name
    out_dir = cache / "supernets" / f"{space.name}-{config_id(settings)}"
    latest = latest_checkpoint(out_dir)
    done = 0 if latest is None else int(latest.stem.split("-")[1])
    if done < setup.supernet_steps:
        log(f"  training the supernet: steps {done} -> {setup.supernet_steps} (checkpoints in {out_dir})")
        start = time.perf_counter()
        config = TrainConfig(
            space=space.name,
            options=dict(space.options),
            steps=setup.supernet_steps,
            batch_size=setup.supernet_batch_size,
            lr=setup.supernet_lr,
            seed=seed,
            device="cpu",
            keep_checkpoints=1,
            out_dir=out_dir,
            distill_subnets=setup.supernet_distill,
            init_from=init_from,
        )
        result = train_supernet(config, resume=latest is not None)
        log(
            f"  supernet trained in {time.perf_counter() - start:.0f}s; held-out loss "
            f"{result.initial_eval:.4f} -> {result.final_eval:.4f}"
        )
        latest = latest_checkpoint(out_dir)
    assert latest is not None
    return latest


# ---------------------------------------------------------------------------- proxies
def score_proxies(context: ProxyContext, names: list[str], configs: list[Config]) -> list[ProxyResult]:
    results = []
    for name in names:
        proxy = get_proxy(name)
        result = ProxyResult(name, proxy.needs, proxy.cost, proxy.direction)
        for config in configs:
            start = time.perf_counter()
            try:
                value = proxy.compute(context, config)
            except ProxyError as exc:
                log(f"  {name}: {exc}")
                value = float("nan")
                result.failures += 1
            result.seconds.append(time.perf_counter() - start)
            result.values.append(value)
        log(f"  {name}: median {statistics.median(result.seconds):.3f}s per subnet")
        results.append(result)
    return results


def correlate(results: list[ProxyResult], qualities: dict[str, list[float]]) -> None:
    """Rho and tau against each truth (quality: larger is better), over the subnets where the proxy
    has a value, the proxy's values signed by its direction."""
    for result in results:
        sign = 1.0 if result.direction == "maximize" else -1.0
        for truth, quality in qualities.items():
            pairs = [(sign * v, q) for v, q in zip(result.values, quality, strict=True) if math.isfinite(v)]
            if len(pairs) >= 3:
                scores, truths = zip(*pairs, strict=True)
                result.spearman[truth], result.kendall[truth] = (
                    spearman(scores, truths),
                    kendall(scores, truths),
                )


def _rho(result: ProxyResult, truth: str) -> float:
    return result.spearman.get(truth, float("nan"))


def markdown_table(results: list[ProxyResult], truths: list[str], n: int) -> str:
    """One row per proxy, best first by Spearman's rho against the first truth."""
    heads = "".join(f" rho ({t}) | tau ({t}) |" for t in truths)
    lines = [
        f"| proxy | needs |{heads} seconds / subnet (median) | failed |",
        "|---|---|" + "---:|---:|" * len(truths) + "---:|---:|",
    ]
    first = truths[0]
    for r in sorted(results, key=lambda r: -_rho(r, first) if math.isfinite(_rho(r, first)) else math.inf):
        cells = "".join(
            f" {r.spearman.get(t, float('nan')):+.3f} | {r.kendall.get(t, float('nan')):+.3f} |"
            for t in truths
        )
        lines.append(
            f"| `{r.name}` | {r.needs} |{cells} {statistics.median(r.seconds):.3f} | {r.failures}/{n} |"
        )
    return "\n".join(lines)


def default_verdict(results: list[ProxyResult], default: str, truth: str, agreement: float | None) -> str:
    """The default proxy against `truth`, beside `macs` and `params` and the truth's own agreement."""
    by_name = {r.name: r for r in results}
    text = f"default `proxy:default` = `{default}` against {truth}: "
    if default not in by_name:
        return text + "not scored"
    rho = _rho(by_name[default], truth)
    baselines = {n: _rho(by_name[n], truth) for n in ("macs", "params") if n in by_name}
    text += f"rho {rho:+.3f}, tau {by_name[default].kendall.get(truth, float('nan')):+.3f}"
    text += "".join(f"; `{n}` {v:+.3f}" for n, v in baselines.items())
    if baselines:
        text += f" (margin over the better baseline {rho - max(baselines.values()):+.3f})"
    if agreement is not None:
        text += f"; the truth's inits agree at {agreement:+.3f}"
    return text


def fitted_predictor(
    context: ProxyContext, setup: SpaceSetup, judged: list[Config], seed: int
) -> QualityPredictor:
    """The `predicted` proxy's predictor for the context's checkpoint, fitted on
    `setup.predictor_samples` inherited subnets that are not judged (cached next to the checkpoint)."""
    assert context.supernet_checkpoint is not None
    path = predictor_path(context.supernet_checkpoint)
    if path.exists():
        stored = QualityPredictor.load(path)
        same_checkpoint = stored.checkpoint == str(context.supernet_checkpoint)
        same_features = stored.features == list(DEFAULT_FEATURES)
        if stored.samples == setup.predictor_samples and same_checkpoint and same_features:
            return stored
    log(f"  fitting the quality predictor on {setup.predictor_samples} inherited subnets")
    folds = min(5, max(2, setup.predictor_samples // 3))
    predictor = fit_for_checkpoint(
        context, samples=setup.predictor_samples, folds=folds, seed=seed + 1, exclude=judged
    )
    predictor.save(path)
    log(
        f"  predictor of {predictor.target}: {predictor.measure_seconds:.0f}s to measure; held-out rho "
        f"{predictor.cv_spearman:+.3f}"
    )
    return predictor


def verdict(results: list[ProxyResult], truth: str) -> str:
    """Which proxy ranks best against `truth`, and whether a zero-cost one beats `params`."""
    by_name = {r.name: r for r in results}
    baseline = _rho(by_name["params"], truth)
    ranked = [r for r in results if math.isfinite(_rho(r, truth))]
    best = max(ranked, key=lambda r: _rho(r, truth))
    zero_cost = [r for r in ranked if r.needs == "batch"]
    parts = [f"against {truth}: best `{best.name}` (rho {_rho(best, truth):+.3f}), `params` {baseline:+.3f}"]
    if zero_cost:
        best_zero = max(zero_cost, key=lambda r: _rho(r, truth))
        beats = "beats" if _rho(best_zero, truth) > baseline else "does not beat"
        parts.append(f"best zero-cost `{best_zero.name}` ({_rho(best_zero, truth):+.3f}) {beats} `params`")
    return "; ".join(parts)


# ---------------------------------------------------------------------------- driver
def run_space(setup: SpaceSetup, args: argparse.Namespace) -> dict[str, Any]:
    space = get_space(setup.space, **setup.options)
    task = make_task(space, args.seed)
    log(f"== {space.name} at {space.options}: {args.subnets} subnets, {setup.train_steps} steps each")
    configs = sample_configs(space, args.subnets, args.seed)
    accuracy = is_classification(task)
    image_checkpoint = None
    phases = Phases()
    if setup.truth_image_from is not None:
        image_setup = SETUPS[setup.truth_image_from]
        image_space = get_space(image_setup.space, **image_setup.options)
        log(f"  the truth's frozen image UNet: the {image_setup.space} benchmark's supernet")
        with torch_threads(max(args.jobs, args.threads)), phases("image supernet"):
            image_checkpoint = trained_supernet(image_space, image_setup, args.seed, args.cache_dir)
    per_seed = []
    for k in range(args.truth_seeds):
        log(f"  init seed {args.seed + k}")
        with phases(f"truth (init {args.seed + k})"):
            per_seed.append(
                ground_truth(
                    space, task, configs, setup, args.seed + k, args.cache_dir, args.jobs, image_checkpoint
                )
            )
    truths = [
        {key: statistics.mean(s[i][key] for s in per_seed) for key in per_seed[0][i] if key != "config"}
        for i in range(len(configs))
    ]
    # Classification is judged on accuracy (the truth) and on held-out loss (finer-grained);
    # quality is larger-is-better, so losses are negated.
    kinds = ["accuracy", "loss"] if accuracy else ["loss"]

    def quality_of(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
        return {kind: [r[kind] if kind == "accuracy" else -r[kind] for r in rows] for kind in kinds}

    quality = quality_of(truths)
    checkpoint = None
    if setup.supernet_steps:
        with torch_threads(max(args.jobs, args.threads)), phases("supernet"):
            checkpoint = trained_supernet(space, setup, args.seed, args.cache_dir)
    context = ProxyContext(space, seed=args.seed, supernet_checkpoint=checkpoint)
    predictor = None
    if checkpoint is not None and setup.predictor_samples:
        with phases("predictor"):
            predictor = fitted_predictor(context, setup, configs, args.seed)
    offered = available_proxies(space, supernet=checkpoint is not None, predictor=predictor is not None)
    names = [n for n in offered if args.proxies is None or n in args.proxies]
    with phases("proxies"):
        results = score_proxies(context, names, configs)
    correlate(results, quality)
    default = default_proxy(space.name, offered)
    ranges = ", ".join(
        f"{kind} {min(map(abs, v)):.4f}..{max(map(abs, v)):.4f}" for kind, v in quality.items()
    )
    summary = (
        f"{space.name} ({json.dumps(space.options, sort_keys=True)}): {len(configs)} subnets, each trained "
        f"from scratch for {setup.train_steps} AdamW steps of batch {setup.batch_size} "
        + ("(learning rate cosine-annealed) " if setup.lr_schedule == "cosine" else "")
        + f"({statistics.median(t['seconds'] for t in truths):.1f}s per subnet, median); held-out {ranges}"
        + (
            f"; supernet trained {setup.supernet_steps} steps"
            + (f", {setup.supernet_distill} distilled subnet(s) a step" if setup.supernet_distill else "")
            if checkpoint
            else "; no supernet"
        )
    )
    if predictor is not None:
        summary += (
            f"; `predicted` fitted on {predictor.samples} other inherited subnets' {predictor.target} "
            f"from {', '.join(predictor.features)} ({predictor.measure_seconds:.0f}s to measure; "
            f"{predictor.folds}-fold held-out rho {predictor.cv_spearman:+.3f}, "
            f"tau {predictor.cv_kendall:+.3f}, RMSE {predictor.cv_rmse:.4g})"
        )
    agreements: dict[str, float] = {}
    if len(per_seed) > 1:
        seeds = [quality_of(rows) for rows in per_seed]
        pairs = [(a, b) for i, a in enumerate(seeds) for b in seeds[i + 1 :]]
        agreements = {kind: statistics.mean(spearman(a[kind], b[kind]) for a, b in pairs) for kind in kinds}
        agreement = ", ".join(f"{kind} {value:+.3f}" for kind, value in agreements.items())
        summary += (
            f". Truth = mean over {len(per_seed)} weight inits; the inits' rankings agree with Spearman "
            f"rho {agreement} (the truth's own noise: no proxy can be judged much beyond it)"
        )
    return {
        "space": space.name,
        "summary": summary,
        "table": markdown_table(results, kinds, len(configs)),
        "verdict": "\n".join(
            [f"- {verdict(results, kind)}" for kind in kinds]
            + [f"- {default_verdict(results, default, kind, agreements.get(kind))}" for kind in kinds]
        ),
        "default": default,
        "agreement": agreements,
        "configs": configs,
        "truth": truths,
        "proxies": [asdict(r) for r in results],
        "phases": phases.rows,
    }


def load_text(load: Any) -> str:
    """A 1/5/15-minute load average as printed beside every timing."""
    return " ".join(f"{x:.1f}" for x in load)


class Phases:
    """Wall time of each phase of a space's run, with the machine's load average as it ended (a phase
    read from the cache takes about 0 s)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        load = [round(x, 2) for x in os.getloadavg()]
        self.rows.append({"phase": name, "seconds": round(seconds, 1), "load": load})
        log(f"  [{name}: {seconds:.0f}s; load average {load_text(load)}]")

    @staticmethod
    def text(rows: list[dict[str, Any]]) -> str:
        parts = [f"{r['phase']} {r['seconds']:.0f}s ({load_text(r['load'])})" for r in rows]
        return ", ".join(parts) + f"; {sum(r['seconds'] for r in rows):.0f}s in all"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spaces", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--subnets", type=int, default=30, help="subnets per space (default 30)")
    parser.add_argument("--steps", type=int, help="training steps per subnet (default: per space, 60)")
    parser.add_argument(
        "--supernet-steps",
        type=int,
        help="supernet training steps; 0 skips the supernet proxies (default 120)",
    )
    parser.add_argument("--proxies", nargs="+", help="only these proxies (default: every available one)")
    parser.add_argument(
        "--predictor-samples",
        type=int,
        help="inherited subnets the `predicted` proxy is fitted on; 0 skips it (default: per space, 200)",
    )
    parser.add_argument(
        "--truth-seeds",
        type=int,
        default=2,
        help="train every subnet from this many weight inits and average (>= 2 also reports how well "
        "the inits' rankings agree: the truth's own noise); default 2",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--jobs",
        type=int,
        default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        help="processes training the truth's subnets, and torch threads training the supernets "
        "(default: one per CPU of this process)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads scoring the proxies (default 1)"
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, help="also write every value and timing to this file")
    args = parser.parse_args(argv)
    if args.subnets < 3:
        parser.error("--subnets must be >= 3 (a rank correlation needs a few points)")
    if args.truth_seeds < 1:
        parser.error("--truth-seeds must be >= 1")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    reports = []
    start = time.perf_counter()
    for name in args.spaces:
        setup = SETUPS[name]
        if args.steps is not None:
            setup = replace(setup, train_steps=args.steps)
        if args.supernet_steps is not None:
            setup = replace(setup, supernet_steps=args.supernet_steps)
        if args.predictor_samples is not None:
            setup = replace(setup, predictor_samples=args.predictor_samples)
        reports.append(run_space(setup, args))
    command = "python benchmarks/proxy_correlation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(
        f"Command: `{command.strip()}` ({time.perf_counter() - start:.0f}s in all; "
        f"load average {load_text(os.getloadavg())})\n"
    )
    for report in reports:
        print(f"### {report['space']}\n\n{report['summary']}\n\n{report['table']}\n\n{report['verdict']}\n")
        print(
            f"Phases (wall seconds; load average 1/5/15 min as each ended): {Phases.text(report['phases'])}\n"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(reports, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
