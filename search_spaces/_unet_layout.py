"""How a canonical UNet config becomes its blocks: stages, units, skip pairing and block arguments
(the rules are described in `search_spaces/unet.py`), the exact enumeration of every block the space
can contain, and the validation of block keys."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from search_spaces._blocks import BlockSpec
from search_spaces._unet_modules import CONV_KINDS, GROUPS, Step

if TYPE_CHECKING:
    from search_spaces.unet import UNetSpace

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
#: Per-stage transformer choices, by config suffix (the key arg names drop the `transformer_`).
ATTR_SUFFIXES = ("transformer_depth", "self_attention", "ffn_ratio", "attention", "head_dim")
STAGE_KINDS: dict[str, str] = {
    **{f"down{level}": "down" for level in range(8)},
    "mid": "mid",
    **{f"up{level}": "up" for level in range(8)},
}

# Required arguments of each block kind (besides `batch` and `dtype`, which every kind takes).
KIND_ARGS: dict[str, tuple[str, ...]] = {
    "unet.time_embed": ("dim", "emb"),
    "unet.conv_in": ("dim", "hw"),
    "unet.resnet": ("in_dim", "skip_dim", "dim", "emb", "conv", "hw"),
    "unet.transformer": (
        "dim",
        "depth",
        "self_attention",
        "ffn_ratio",
        "attention",
        "head_dim",
        "tokens",
        "context",
        "hw",
    ),
    "unet.down": ("dim", "hw"),
    "unet.up": ("dim", "hw"),
    "unet.conv_out": ("dim", "hw"),
}
_POSITIVE_ARGS = ("dim", "in_dim", "emb", "depth", "ffn_ratio", "head_dim", "tokens", "context", "batch")
_WORD_ARGS = {
    "conv": CONV_KINDS,
    "attention": ("mqa", "mha"),
    "self_attention": ("off", "on"),
    "dtype": tuple(DTYPES),
}


def stage_names(levels: int) -> list[str]:
    """Stages in execution order: down0 .. down{levels-1}, mid, up{levels-1} .. up0."""
    return [f"down{lv}" for lv in range(levels)] + ["mid"] + [f"up{lv}" for lv in reversed(range(levels))]


def stage_level(stage: str, levels: int) -> int:
    return levels - 1 if stage == "mid" else int(stage.removeprefix("down").removeprefix("up"))


def entry_channels(stage: str, levels: int, width: Callable[[int], int]) -> int:
    """Width of the tensor entering `stage`, given each level's width."""
    level = stage_level(stage, levels)
    if stage.startswith("down"):
        return width(max(level - 1, 0))
    if stage.startswith("up") and level < levels - 1:
        return width(level + 1)
    return width(level)


def units(resnets: int, transformers: int) -> list[list[str]]:
    """The units of a stage: each ResNet with its share of the transformers (earlier units take the
    remainder), or every transformer alone when there are no ResNets."""
    if resnets == 0:
        return [["transformer"] for _ in range(transformers)]
    share, extra = divmod(transformers, resnets)
    return [["resnet"] + ["transformer"] * (share + (k < extra)) for k in range(resnets)]


def unit_count(resnets: int, transformers: int) -> int:
    return resnets if resnets else transformers


def _hw(side: int) -> str:
    return f"{side}x{side}"


@dataclass(frozen=True)
class LayoutEntry:
    """One block of a subnet: its spec, how the runner calls it, and where it sits.

    `slot` is its role in the stage (`resnet`, `transformer`, `down`, `up`) or outside stages (`time`,
    `conv_in`, `conv_out`); `index` numbers the stage's ResNets and transformers separately (the level
    for `down`/`up`). `out_dim` and `out_side` describe the running tensor after the block.
    """

    spec: BlockSpec
    step: Step
    stage: str
    slot: str
    index: int
    out_dim: int
    out_side: int


@dataclass(frozen=True)
class Layout:
    """The blocks of a subnet in execution order, and for every stage the index of the entry where its
    blocks (or, without any, whatever follows) begin."""

    entries: tuple[LayoutEntry, ...]
    starts: dict[str, int] = field(default_factory=dict)


def build_layout(space: UNetSpace, config: Mapping[str, Any], batch: int) -> Layout:
    """The layout of a canonical config, with every block at `batch`."""
    levels = config["levels"]
    widths = [space.width(config[f"level{lv}.channels"]) for lv in range(levels)]
    sides = [space.options["latent_size"] >> lv for lv in range(levels)]
    emb = 4 * widths[0]
    text = {"tokens": space.options["text_tokens"], "context": space.options["cross_attention_dim"]}

    def get(stage: str, suffix: str) -> Any:
        return config[f"{stage}.{suffix}"]

    # Skip tensors each level offers (entering tensor first) and how many its up stage takes.
    offered = [
        [widths[lv - 1] if lv else widths[0]]
        + [widths[lv]] * unit_count(get(f"down{lv}", "resnets"), get(f"down{lv}", "transformers"))
        for lv in range(levels)
    ]
    taken = [min(get(f"up{lv}", "resnets"), len(offered[lv])) for lv in range(levels)]

    def kept(level: int, index: int) -> bool:
        return index >= len(offered[level]) - taken[level]

    entries: list[LayoutEntry] = []
    starts: dict[str, int] = {}

    def add(
        kind: str, step: Step, stage: str, slot: str, index: int, out: tuple[int, int], **args: Any
    ) -> None:
        entries.append(LayoutEntry(space.spec(kind, batch, **args), step, stage, slot, index, *out))

    add("unet.time_embed", Step("time"), "", "time", 0, (emb, 0), dim=widths[0], emb=emb)
    push = kept(0, 0)
    add(
        "unet.conv_in",
        Step("conv_in", push=push),
        "",
        "conv_in",
        0,
        (widths[0], sides[0]),
        dim=widths[0],
        hw=_hw(sides[0]),
    )
    x = widths[0]

    def run_stage(stage: str, level: int, skips: list[int], push_units: bool) -> None:
        nonlocal x
        starts[stage] = len(entries)
        side, out = sides[level], widths[level]
        counters = {"resnet": 0, "transformer": 0}
        for number, unit in enumerate(units(get(stage, "resnets"), get(stage, "transformers"))):
            for position, role in enumerate(unit):
                push = push_units and position == len(unit) - 1 and kept(level, number + 1)
                index = counters[role]
                counters[role] += 1
                if role == "resnet":
                    skip = skips[index] if index < len(skips) else 0
                    add(
                        "unet.resnet",
                        Step("resnet", pop=skip > 0, push=push),
                        stage,
                        role,
                        index,
                        (out, side),
                        in_dim=x,
                        skip_dim=skip,
                        dim=out,
                        emb=emb,
                        conv=get(stage, "resnet_conv"),
                        hw=_hw(side),
                    )
                    x = out
                else:
                    attrs = dict(
                        zip(
                            ("depth", "self_attention", "ffn_ratio", "attention", "head_dim"),
                            (get(stage, suffix) for suffix in ATTR_SUFFIXES),
                            strict=True,
                        )
                    )
                    add(
                        "unet.transformer",
                        Step("transformer", push=push),
                        stage,
                        role,
                        index,
                        (x, side),
                        dim=x,
                        hw=_hw(side),
                        **attrs,
                        **text,
                    )
        assert x == out, f"{stage} ends at width {x}, not its level's {out}"

    for level in range(levels):
        run_stage(f"down{level}", level, [], push_units=True)
        if level < levels - 1:
            push = kept(level + 1, 0)
            add(
                "unet.down",
                Step("down", push=push),
                f"down{level}",
                "down",
                level,
                (x, sides[level + 1]),
                dim=x,
                hw=_hw(sides[level]),
            )
    run_stage("mid", levels - 1, [], push_units=False)
    for level in reversed(range(levels)):
        run_stage(
            f"up{level}", level, [offered[level][-1 - j] for j in range(taken[level])], push_units=False
        )
        if level > 0:
            add(
                "unet.up",
                Step("up"),
                f"up{level}",
                "up",
                level,
                (x, sides[level - 1]),
                dim=x,
                hw=_hw(sides[level]),
            )
    add("unet.conv_out", Step("conv_out"), "", "conv_out", 0, (4, sides[0]), dim=x, hw=_hw(sides[0]))
    return Layout(tuple(entries), starts)


def enumerate_blocks(space: UNetSpace) -> Iterator[BlockSpec]:
    """Every block any subnet of `space` can contain (with repeats), following `build_layout`'s rules
    stage by stage: the blocks of a stage depend only on the widths, the stage's own choices and, for
    an up stage, the number of units of the down stage at its level."""
    text = {"tokens": space.options["text_tokens"], "context": space.options["cross_attention_dim"]}
    transformers_done: set[tuple[int, int, tuple[Any, ...]]] = set()
    for config in space.width_configs():
        levels = config["levels"]
        widths = [space.width(config[f"level{lv}.channels"]) for lv in range(levels)]
        sides = [space.options["latent_size"] >> lv for lv in range(levels)]
        emb = 4 * widths[0]
        yield space.spec("unet.time_embed", dim=widths[0], emb=emb)
        yield space.spec("unet.conv_in", dim=widths[0], hw=_hw(sides[0]))
        yield space.spec("unet.conv_out", dim=widths[0], hw=_hw(sides[0]))
        for level in range(levels - 1):
            yield space.spec("unet.down", dim=widths[level], hw=_hw(sides[level]))
            yield space.spec("unet.up", dim=widths[level + 1], hw=_hw(sides[level + 1]))
        for stage in stage_names(levels):
            level = stage_level(stage, levels)
            options = space.stage_options(stage)
            out, side = widths[level], sides[level]
            if max(options["transformers"]) > 0:
                for attrs in itertools.product(*(options[suffix] for suffix in ATTR_SUFFIXES)):
                    if (out, side, attrs) in transformers_done:
                        continue
                    transformers_done.add((out, side, attrs))
                    names = ("depth", "self_attention", "ffn_ratio", "attention", "head_dim")
                    yield space.spec(
                        "unet.transformer",
                        dim=out,
                        hw=_hw(side),
                        **dict(zip(names, attrs, strict=True)),
                        **text,
                    )
            entering = entry_channels(stage, levels, widths.__getitem__)
            resnets = [r for r in options["resnets"] if r >= space.minimum_resnets(stage, config)]
            for conv, pairing in itertools.product(
                space.conv_options, _pairings(space, stage, config, widths, resnets)
            ):
                for index, skip in enumerate(pairing):
                    yield space.spec(
                        "unet.resnet",
                        in_dim=entering if index == 0 else out,
                        skip_dim=skip,
                        dim=out,
                        emb=emb,
                        conv=conv,
                        hw=_hw(side),
                    )


def _pairings(
    space: UNetSpace, stage: str, config: Mapping[str, Any], widths: list[int], resnets: list[int]
) -> Iterator[list[int]]:
    """The skip widths of a stage's ResNets (0: none), for every count it can have."""
    if not stage.startswith("up"):
        yield from ([0] * r for r in resnets)
        return
    level = stage_level(stage, config["levels"])
    down = space.stage_options(f"down{level}")
    minimum = space.minimum_resnets(f"down{level}", config)
    unit_counts = {unit_count(r, t) for r in down["resnets"] if r >= minimum for t in down["transformers"]}
    for count in sorted(unit_counts):
        offered = [widths[level - 1] if level else widths[0]] + [widths[level]] * count
        for r in resnets:
            taken = min(r, len(offered))
            yield [offered[-1 - j] if j < taken else 0 for j in range(r)]


def parse_side(spec: BlockSpec) -> int:
    text = str(spec["hw"])
    height, sep, width = text.partition("x")
    if not (sep and height.isdigit() and width.isdigit() and height == width and int(height) > 0):
        raise ValueError(f"block {spec.key!r}: hw must be a square 'NxN' with N > 0, got {text!r}")
    return int(height)


def validate_spec(
    spec: BlockSpec, space_name: str, kinds: Mapping[str, tuple[str, ...]] = KIND_ARGS
) -> dict[str, Any]:
    """The args of `spec` after checking its kind, required args, words and sizes."""
    if spec.kind not in kinds:
        raise ValueError(
            f"block kind {spec.kind!r} does not belong to space {space_name!r}; known kinds: {sorted(kinds)}"
        )
    args = spec.arg_dict
    missing = [name for name in (*kinds[spec.kind], "batch", "dtype") if name not in args]
    if missing:
        raise ValueError(f"block {spec.key!r} lacks args {missing}")
    for name, allowed in _WORD_ARGS.items():
        if name in args and args[name] not in allowed:
            raise ValueError(f"block {spec.key!r}: {name} must be one of {list(allowed)}, got {args[name]!r}")
    for name in _POSITIVE_ARGS:
        if name in args and not (isinstance(args[name], int) and args[name] > 0):
            raise ValueError(f"block {spec.key!r}: {name} must be a positive integer, got {args[name]!r}")
    skip = args.get("skip_dim", 0)
    if not (isinstance(skip, int) and skip >= 0):
        raise ValueError(f"block {spec.key!r}: skip_dim must be a non-negative integer, got {skip!r}")
    normalised = [args[name] for name in ("dim", "in_dim") if name in args and spec.kind != "unet.time_embed"]
    if spec.kind == "unet.resnet":
        normalised.append(args["in_dim"] + skip)
    if any(width % GROUPS for width in normalised):
        raise ValueError(f"block {spec.key!r}: widths must be multiples of the {GROUPS} GroupNorm groups")
    if spec.kind == "unet.time_embed" and args["dim"] % 2:
        raise ValueError(f"block {spec.key!r}: dim must be even (sine and cosine halves)")
    if "hw" in kinds[spec.kind]:
        parse_side(spec)
    return args
