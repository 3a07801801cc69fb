"""Mixed-precision spaces: a per-layer weight bit width over a fixed architecture, as BitsFusion
(arXiv 2406.04333) searches the SD-v1.5 UNet.

`MixedPrecisionSpace` composes with a base space: its option `architecture` names one of the base
space's reference configs (`sd15`, `snapfusion`, `snapgen`; `s0` .. `l`), and every other option is
the base space's. Its choices are one `bits.<layer>` per quantizable conv / linear layer of that
architecture, in execution order, with options 1, 2, 3, 4, 8 and 16 bits (16: float16, not
quantized); `<layer>` is the block's place (`down1.resnet0`, `mid.transformer0`, `stem`) and the
module path inside it (`conv1`, `layers.0.attn2.to_k`). Omitted choices are 16 bits, so the default
config is the unquantized network.

The paper's exceptions are not choices: the layers of the blocks in `fixed_kinds`, and the layers
named in `fixed_layer_names` in any block, are always at the option `fixed_bits` (8 by default). On
the UNet these are the first and last convs (`conv_in`, `conv_out`, which the paper keeps at 8 bits)
and the whole time-embedding path: the time MLP (`time.linear_1`, `time.linear_2`) and every
ResNet's time-embedding projection (`time_emb_proj`, 22 layers), which makes the searched layers of
SD-v1.5 exactly the paper's 256. On EfficientFormerV2 the stem's two convs and the classifier heads
are fixed. Norms and biases are never quantized (16 bits).

Quantization is channel-wise, symmetric and uniform with 2^n + 1 levels (`search_spaces._quantize`);
`build(config)` returns the fake-quantized network (weights quantized and decoded), whose outputs
the packed export reproduces exactly. `weight_storage(config)` counts the size the paper's way.

Blocks are the base space's blocks with one more key arg, `wbits`: the widest width of the block's
layers. A table entry for `wbits=w` times the block with every layer at w, so a mixed block is priced
as its widest layer; a table fills such entries on the runtime's real low-bit kernel where it has one
(`latency_lut.low_bit`; see docs/quantization.md).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call

from search_spaces._base import Choice, Config, ConfigError, OptionError, OptionSpec, SearchSpace, Supernet
from search_spaces._blocks import BlockSpec
from search_spaces._quantize import (
    ASSIGNED_BITS,
    BIT_OPTIONS,
    FALLBACK_BITS,
    SENSITIVITY_ETA,
    UNQUANTIZED,
    assign_bits,
    counted_bits,
    fake_quantize,
    layer_bits,
)
from search_spaces._space_registry import register_space
from search_spaces._weights import weights_mismatch
from search_spaces.efficientformerv2 import EfficientFormerV2Space
from search_spaces.unet import UNetSpace

QUANTIZABLE = (nn.Conv2d, nn.Linear)
_LAYERS: dict[tuple[Any, ...], list[QuantLayer]] = {}
CHOICE_PREFIX = "bits."
#: The mean bits per weight of the BitsFusion recipe (the `bitsfusion` reference config's target).
BITSFUSION_MEAN_BITS = 1.99


@dataclass(frozen=True)
class QuantLayer:
    """One quantizable layer of the architecture: its choice name (without `bits.`), module path in
    `build(config)`, block index and label, weight count, output channels and, if fixed, its width."""

    name: str
    path: str
    block: int
    label: str
    weights: int
    channels: int
    fixed: int | None


@dataclass(frozen=True)
class WeightStorage:
    """What a config's weights take: bytes, mean bits per conv / linear weight, and the counts."""

    size_bytes: float
    mean_bits: float
    quantized_weights: int
    other_params: int

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


def quantizable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The conv and linear layers of `model` with their paths, in registration order."""
    return [(path, module) for path, module in model.named_modules() if isinstance(module, QUANTIZABLE)]


class MixedPrecisionSpace(SearchSpace):
    """Per-layer weight bit widths over one architecture of `base_class` (see the module docstring).

    Subclasses set `name`, `description`, `base_class`, `default_architecture`, `fixed_kinds` and
    may label blocks more readably (`_block_labels`).
    """

    base_class: ClassVar[type[SearchSpace]]
    default_architecture: ClassVar[str]
    fixed_kinds: ClassVar[tuple[str, ...]]
    #: Layers (by their last name part) kept at `fixed_bits` in every block.
    fixed_layer_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.options["weights"]:
            self.check_weights(self.options["weights"])

    def check_weights(self, path: str) -> None:
        """What can be checked of the `weights` checkpoint without reading its tensors (so that a
        search spec naming a wrong one is refused when it is submitted): that it exists."""
        if not Path(path).exists():
            raise OptionError(
                f"option 'weights': no file or folder {path!r} on this machine",
                field="weights",
                allowed="a checkpoint path on the server's disk ('' = random init)",
            )

    @functools.cached_property
    def base(self) -> SearchSpace:
        """The base space at this space's options."""
        names = {spec.name for spec in self.base_class.option_specs()}
        return self.base_class(**{k: v for k, v in self.options.items() if k in names})

    @functools.cached_property
    def architecture(self) -> Config:
        """The canonical base config whose layers get bit widths."""
        return self.base.canonicalize(self.options["architecture"])

    # ----------------------------------------------------------------- declarations
    @classmethod
    def option_specs(cls) -> list[OptionSpec]:
        return [
            *cls.base_class.option_specs(),
            OptionSpec(
                "architecture",
                cls.default_architecture,
                str,
                allowed=tuple(cls.base_class.reference_configs()),
                help=f"the {cls.base_class.name} reference config whose layers get bit widths",
            ),
            OptionSpec(
                "weights",
                "",
                str,
                help="a checkpoint of the architecture's float weights on this machine ('' = random init)",
            ),
            OptionSpec(
                "fixed_bits",
                8,
                int,
                allowed=(8, 16),
                help="width of the layers the paper keeps apart (first and last layers)",
            ),
        ]

    @functools.cached_property
    def layers(self) -> list[QuantLayer]:
        """Every quantizable layer of the architecture, in execution order (counted on meta once
        per process and options)."""
        key = (self.name, tuple(sorted(self.options.items())))
        if key not in _LAYERS:
            _LAYERS[key] = self._find_layers()
        return _LAYERS[key]

    def _find_layers(self) -> list[QuantLayer]:
        specs = self.base.blocks(self.architecture)
        labels = self._block_labels(self.base, self.architecture)
        with torch.device("meta"):
            model = self.base.build(self.architecture)
        out = []
        for path, module in quantizable_modules(model):
            _, index, inner = path.split(".", 2)
            block = int(index)
            name = f"{labels[block]}.{inner.removesuffix('.full').removesuffix('.conv')}"
            kept = specs[block].kind in self.fixed_kinds or name.rsplit(".", 1)[-1] in self.fixed_layer_names
            fixed = self.options["fixed_bits"] if kept else None
            weight = module.weight
            out.append(QuantLayer(name, path, block, labels[block], weight.numel(), weight.shape[0], fixed))
        names = [layer.name for layer in out]
        if len(set(names)) != len(names):
            raise RuntimeError(f"space {self.name!r}: layer names are not unique")
        return out

    @property
    def searched_layers(self) -> list[QuantLayer]:
        return [layer for layer in self.layers if layer.fixed is None]

    def _block_labels(self, base: SearchSpace, architecture: Config) -> list[str]:
        """A readable, unique label per block of the architecture (default: kind and index)."""
        return [f"{spec.kind.split('.', 1)[1]}{i}" for i, spec in enumerate(base.blocks(architecture))]

    def choices(self) -> list[Choice]:
        return [
            Choice(CHOICE_PREFIX + layer.name, BIT_OPTIONS, f"weight bits ({layer.weights} weights)")
            for layer in self.searched_layers
        ]

    @classmethod
    def reference_configs(cls) -> dict[str, Config]:
        """`fp16` (nothing quantized), `w2` / `w3` / `w4` / `w8` (every searched layer at that width)
        and `bitsfusion` (the paper's recipe at the default options; see `reference_config`)."""
        return _default_references(cls)

    def reference_config(self, name: str) -> Config:
        """The reference config `name` for this instance's architecture and options."""
        references = self._references()
        if name not in references:
            return super().reference_config(name)
        return self.canonicalize(references[name])

    def _references(self) -> dict[str, Config]:
        out: dict[str, Config] = {"fp16": {}}
        for bits in (2, 3, 4, 8):
            out[f"w{bits}"] = {CHOICE_PREFIX + layer.name: bits for layer in self.searched_layers}
        out["bitsfusion"] = self.bitsfusion_config()
        return out

    def bitsfusion_config(self, mean_bits: float = BITSFUSION_MEAN_BITS) -> Config:
        """The paper's recipe without its weights: the assignment for a mean of `mean_bits` bits per
        weight, with M(i, b) = 4^-b, the relative noise power of a b-bit uniform quantizer of
        equally distributed weights (so S(i, b) = 4^-b * N_i^-0.3: larger layers get fewer bits).
        The `bitsfusion` strategy does the same with measured sensitivities."""
        sensitivity = {
            layer.name: {b: 4.0**-b * layer.weights**-SENSITIVITY_ETA for b in (1, 2, 3)}
            for layer in self.searched_layers
        }
        return self.config_for_mean_bits(sensitivity, mean_bits)

    def config_for_mean_bits(
        self, sensitivity: Mapping[str, Mapping[int, float]], mean_bits: float
    ) -> Config:
        """The paper's assignment of the searched layers (by `name`) for a mean of at most `mean_bits`
        bits per conv / linear weight, the fixed layers included."""
        fixed = sum(layer.weights * counted_bits(layer.fixed) for layer in self.layers if layer.fixed)
        total = sum(layer.weights for layer in self.layers)
        cost = {
            layer.name: {b: layer.weights * counted_bits(b) for b in (1, 2, 3, FALLBACK_BITS)}
            for layer in self.searched_layers
        }
        assigned, _ = assign_bits(sensitivity, cost, mean_bits * total - fixed)
        return {CHOICE_PREFIX + name: bits for name, bits in assigned.items()}

    def config_for_size(self, sensitivity: Mapping[str, Mapping[int, float]], size_mb: float) -> Config:
        """The paper's assignment of the searched layers for a weight size of at most `size_mb`."""
        searched = {layer.name for layer in self.searched_layers}
        storage = self.weight_storage(self.canonicalize({}))
        other_bits = storage.size_bytes * 8 - sum(
            layer_bits(layer.weights, layer.channels, UNQUANTIZED) for layer in self.searched_layers
        )
        cost = {
            layer.name: {b: layer_bits(layer.weights, layer.channels, b) for b in (1, 2, 3, FALLBACK_BITS)}
            for layer in self.searched_layers
            if layer.name in searched
        }
        assigned, _ = assign_bits(sensitivity, cost, size_mb * 8e6 - other_bits)
        return {CHOICE_PREFIX + name: bits for name, bits in assigned.items()}

    def describe(self) -> dict[str, Any]:
        """As `SearchSpace.describe`, with the reference configs of this instance's layers (which
        depend on the options: at small widths some shortcut convs disappear), the base space and
        the fixed layers."""
        out = {
            "name": self.name,
            "description": self.description,
            "choices": [c.to_dict() for c in self.choice_map.values()],
            "options": [spec.to_dict() for spec in self.option_specs()],
            "option_values": dict(self.options),
            "reference_configs": {name: self.reference_config(name) for name in self._references()},
            "cardinality": str(self.cardinality),
        }
        out["base_space"] = self.base_class.name
        out["fixed_layers"] = {layer.name: layer.fixed for layer in self.layers if layer.fixed}
        out["layer_stages"] = self.layer_stages()
        return out

    def _canonicalize(self, config: Config) -> Config:
        for name, value in config.items():
            if value == 0:
                options = list(self.choice_map[name].options)
                raise ConfigError(
                    f"choice {name!r} may not be 0; options: {options}", field=name, allowed=options
                )
        return config

    # ----------------------------------------------------------------- the assignment and its size
    def assignment(self, config: Mapping[str, Any]) -> dict[str, int]:
        """Width of every quantizable layer (fixed ones included), by module path."""
        canonical = self.canonicalize(config)
        return {
            layer.path: layer.fixed if layer.fixed else canonical[CHOICE_PREFIX + layer.name]
            for layer in self.layers
        }

    def weight_storage(self, config: Mapping[str, Any]) -> WeightStorage:
        """The weights' size counted the paper's way: an n-bit layer at log2(2^n + 1) bits per weight
        plus a 16-bit scale per output channel, 16-bit layers, norms and biases at 16 bits."""
        bits = self.assignment(config)
        quantized = sum(layer.weights for layer in self.layers)
        weight_bits = sum(layer.weights * counted_bits(bits[layer.path]) for layer in self.layers)
        storage = sum(layer_bits(layer.weights, layer.channels, bits[layer.path]) for layer in self.layers)
        other = self._other_params
        return WeightStorage((storage + other * UNQUANTIZED) / 8, weight_bits / quantized, quantized, other)

    @functools.cached_property
    def _other_params(self) -> int:
        """Parameters outside the conv / linear weights (norms, biases, embeddings): 16 bits each."""
        total = sum(spec.params for spec in self.base.blocks(self.architecture))
        return total - sum(layer.weights for layer in self.layers)

    def choice_cost(self, choice: str, bits: int) -> dict[str, float]:
        """What the layer of `choice` adds to `size_mb` and to `bits` at width `bits` (both objectives
        are sums over layers, so a config's value is the sum of its layers' parts plus the rest)."""
        layer = self._layers_by_choice[choice]
        total = sum(item.weights for item in self.layers)
        return {
            "size_mb": layer_bits(layer.weights, layer.channels, bits) / 8e6,
            "bits": layer.weights * counted_bits(bits) / total,
        }

    @functools.cached_property
    def _layers_by_choice(self) -> dict[str, QuantLayer]:
        return {CHOICE_PREFIX + layer.name: layer for layer in self.searched_layers}

    def summary(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A readable digest of a config: weights per width, and the mean bits of every block."""
        bits = self.assignment(config)
        per_width: dict[str, int] = {}
        per_block: dict[str, list[float]] = {}
        for layer in self.layers:
            width = bits[layer.path]
            per_width[str(width)] = per_width.get(str(width), 0) + layer.weights
            acc = per_block.setdefault(layer.label, [0.0, 0.0])
            acc[0] += layer.weights * counted_bits(width)
            acc[1] += layer.weights
        storage = self.weight_storage(config)
        return {
            "size_mb": round(storage.size_mb, 3),
            "mean_bits": round(storage.mean_bits, 4),
            "weights_by_bits": dict(sorted(per_width.items(), key=lambda kv: int(kv[0]))),
            "mean_bits_by_block": {name: round(b / n, 3) for name, (b, n) in per_block.items()},
        }

    def stage_of(self, layer: QuantLayer) -> str:
        """The group a layer is shown in (default: its block)."""
        return layer.label

    def layer_stages(self) -> list[dict[str, Any]]:
        """The layers per stage, in execution order: stage, layers, searched layers, weights."""
        out: dict[str, dict[str, Any]] = {}
        for layer in self.layers:
            entry = out.setdefault(
                self.stage_of(layer),
                {"stage": self.stage_of(layer), "layers": 0, "searched": 0, "weights": 0},
            )
            entry["layers"] += 1
            entry["searched"] += layer.fixed is None
            entry["weights"] += layer.weights
        return list(out.values())

    def precision_view(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A config readable with hundreds of layers: the size and mean bits, a histogram of widths
        (layers and weights per width), per stage (execution order) its layers, mean bits and
        histogram, and the full per-layer list (name, stage, width, weights, fixed)."""
        bits = self.assignment(config)
        storage = self.weight_storage(config)
        histogram: dict[int, dict[str, int]] = {}
        stages: dict[str, dict[str, Any]] = {}
        layers = []
        for layer in self.layers:
            width = bits[layer.path]
            counts = histogram.setdefault(width, {"bits": width, "layers": 0, "weights": 0})
            counts["layers"] += 1
            counts["weights"] += layer.weights
            stage = self.stage_of(layer)
            entry = stages.setdefault(
                stage, {"stage": stage, "layers": 0, "weights": 0, "counted_bits": 0.0, "histogram": {}}
            )
            entry["layers"] += 1
            entry["weights"] += layer.weights
            entry["counted_bits"] += layer.weights * counted_bits(width)
            entry["histogram"][str(width)] = entry["histogram"].get(str(width), 0) + 1
            layers.append(
                {"name": layer.name, "stage": stage, "bits": width, "weights": layer.weights,
                 "fixed": layer.fixed is not None}
            )  # fmt: skip
        return {
            "size_mb": round(storage.size_mb, 4),
            "mean_bits": round(storage.mean_bits, 4),
            "layers_total": len(self.layers),
            "histogram": [histogram[b] for b in sorted(histogram)],
            "stages": [
                {
                    "stage": entry["stage"],
                    "layers": entry["layers"],
                    "weights": entry["weights"],
                    "mean_bits": round(entry["counted_bits"] / entry["weights"], 3),
                    "histogram": dict(sorted(entry["histogram"].items(), key=lambda kv: int(kv[0]))),
                }
                for entry in stages.values()
            ],
            "layers": layers,
        }

    # ----------------------------------------------------------------- blocks and modules
    def blocks(self, config: Mapping[str, Any]) -> list[BlockSpec]:
        bits = self.assignment(config)
        widest: dict[int, int] = {}
        for layer in self.layers:
            widest[layer.block] = max(widest.get(layer.block, 0), bits[layer.path])
        specs = self.base.blocks(self.architecture)
        return [self._with_bits(spec, widest.get(i, UNQUANTIZED)) for i, spec in enumerate(specs)]

    def _with_bits(self, spec: BlockSpec, bits: int) -> BlockSpec:
        return BlockSpec.make(spec.kind, params=spec.params, **spec.arg_dict, wbits=bits)

    def all_blocks(self) -> list[BlockSpec]:
        """Every block of the architecture at every width (a mixed block is keyed by its widest)."""
        seen: dict[str, BlockSpec] = {}
        for spec in self.base.blocks(self.architecture):
            for bits in BIT_OPTIONS:
                block = self._with_bits(spec, bits)
                seen.setdefault(block.key, block)
        return list(seen.values())

    def build_block(self, spec: BlockSpec) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        args = spec.arg_dict
        bits = args.pop("wbits", None)
        if bits not in BIT_OPTIONS:
            raise ValueError(f"block {spec.key!r}: wbits must be one of {list(BIT_OPTIONS)}, got {bits!r}")
        module, inputs = self.base.build_block(BlockSpec.make(spec.kind, **args))
        quantize_module(module, {path: int(bits) for path, _ in quantizable_modules(module)})
        return module, inputs

    def float_model(self) -> nn.Module:
        """The architecture unquantized: the `weights` checkpoint if the option names one, else
        random init from the global generator."""
        model = self.base.build(self.architecture)
        if self.options["weights"]:
            self.load_weights(model, self.options["weights"])
        return model

    def load_weights(self, model: nn.Module, path: str) -> None:
        """Load the checkpoint `path` into `model` (the architecture's float model): a file saved by
        `torch.save` or safetensors in this project's names. `OptionError` (field `weights`) says
        what is wrong."""
        if Path(path).is_dir():
            raise OptionError(
                f"option 'weights': {path!r} is a folder; space {self.name!r} reads a checkpoint file",
                field="weights",
                allowed="a state dict file (.pt or .safetensors) of the architecture's float model",
            )
        load_weights(model, path)

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        bits = self.assignment(config)
        return quantize_module(self.float_model(), bits)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        return self.base.example_inputs(batch)

    def supernet(self) -> PrecisionSupernet:
        return PrecisionSupernet(self)


def quantize_module(model: nn.Module, bits: Mapping[str, int]) -> nn.Module:
    """Fake-quantize, in place, the weight of every layer of `model` named in `bits` (path -> width)."""
    with torch.no_grad():
        for path, width in bits.items():
            weight = model.get_submodule(path).weight
            if weight.device.type != "meta":
                weight.copy_(fake_quantize(weight, width))
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """Load float weights into `model`: a state dict saved by `torch.save` (or a `.safetensors` file)
    whose names and shapes are the model's; `OptionError` (field `weights`) naming what is wrong."""
    source = Path(path)
    if not source.exists():
        raise OptionError(f"option 'weights': no file or folder {path!r} on this machine", field="weights")
    try:
        if source.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(source)
        else:
            state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise OptionError(
            f"option 'weights': {path!r} is not a torch or safetensors state dict ({type(exc).__name__})",
            field="weights",
        ) from None
    mismatch = weights_mismatch({key: value.shape for key, value in model.state_dict().items()}, state)
    if mismatch:
        raise OptionError(
            f"option 'weights': {path!r} does not hold this architecture's weights: {mismatch}",
            field="weights",
            allowed="a state dict of the architecture's float model (`space.float_model().state_dict()`), "
            "or for unet_bits a diffusers UNet folder",
        )
    model.load_state_dict(state)


class PrecisionSupernet(Supernet):
    """One float network of the architecture whose weights every bit-width config shares:
    `activate(config)` picks the widths, `forward` runs with the weights quantized on the fly."""

    def __init__(self, space: MixedPrecisionSpace):
        super().__init__(space)
        self.net = space.float_model()
        self.bits: dict[str, int] = {}

    def activate(self, config: Mapping[str, Any]) -> None:
        assert isinstance(self.space, MixedPrecisionSpace)
        self.active_config = self.space.canonicalize(config)
        self.bits = self.space.assignment(self.active_config)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        weights = {
            f"{path}.weight": fake_quantize(self.net.get_submodule(path).weight, width)
            for path, width in self.bits.items()
            if width < UNQUANTIZED
        }
        return functional_call(self.net, weights, args, kwargs)

    def extract(self, config: Mapping[str, Any]) -> nn.Module:
        assert isinstance(self.space, MixedPrecisionSpace)
        model = self.space.base.build(self.space.architecture)
        model.load_state_dict(self.net.state_dict())
        return quantize_module(model, self.space.assignment(config))


@functools.cache
def _default_references(cls: type[MixedPrecisionSpace]) -> dict[str, Config]:
    space = cls()
    return {name: space.canonicalize(config) for name, config in space._references().items()}


def weight_storage(space: SearchSpace, config: Mapping[str, Any]) -> WeightStorage:
    """`space.weight_storage(config)` for a mixed-precision space; for any other space every
    parameter at 16 bits (the float16 size)."""
    if isinstance(space, MixedPrecisionSpace):
        return space.weight_storage(config)
    params = sum(spec.params for spec in space.blocks(space.canonicalize(config)))
    return WeightStorage(params * 2.0, float(UNQUANTIZED), params, 0)


@register_space
class UNetBitsSpace(MixedPrecisionSpace):
    """Per-layer weight bits of a UNet architecture (BitsFusion on SD-v1.5 by default)."""

    name = "unet_bits"
    description = (
        "Per-layer weight bit widths (1, 2, 3, 4, 8, 16) of a diffusion UNet (sd15, snapfusion, "
        "snapgen), as BitsFusion searches SD-v1.5; first/last convs and the time MLP at 8 bits."
    )
    base_class = UNetSpace
    default_architecture = "sd15"
    fixed_kinds = ("unet.time_embed", "unet.conv_in", "unet.conv_out")
    # The paper's 256 quantizable layers are SD-v1.5's 282 conv / linear layers less the first and
    # last convs, the time MLP (2) and the 22 ResNets' time-embedding projections: the whole
    # time-embedding path stays out of the low-bit assignment.
    fixed_layer_names = ("time_emb_proj",)

    def load_weights(self, model: nn.Module, path: str) -> None:
        """As `MixedPrecisionSpace.load_weights`, and a folder is read as a diffusers UNet
        (`search_spaces.diffusers_unet`: config.json + diffusion_pytorch_model.safetensors or .bin)."""
        if not Path(path).is_dir():
            return super().load_weights(model, path)
        from search_spaces.diffusers_unet import load_diffusers_unet

        assert isinstance(self.base, UNetSpace)
        load_diffusers_unet(self.base, self.architecture, model, path)

    def check_weights(self, path: str) -> None:
        """As `MixedPrecisionSpace.check_weights`; a diffusers folder's config.json is checked too."""
        super().check_weights(path)
        if Path(path).is_dir():
            from search_spaces.diffusers_unet import check_folder

            assert isinstance(self.base, UNetSpace)
            check_folder(self.base, self.architecture, path)

    def stage_of(self, layer: QuantLayer) -> str:
        """The UNet stage (`down0` .. `up0`, `mid`) or outer block (`time`, `conv_in`, `conv_out`)."""
        return layer.label.split(".", 1)[0]

    def _block_labels(self, base: SearchSpace, architecture: Config) -> list[str]:
        assert isinstance(base, UNetSpace)
        return [
            f"{entry.stage}.{entry.slot}{entry.index}" if entry.stage else entry.slot
            for entry in base.layout(architecture).entries
        ]


@register_space
class EfficientFormerV2BitsSpace(MixedPrecisionSpace):
    """Per-layer weight bits of an EfficientFormerV2 architecture (S0 by default)."""

    name = "efficientformerv2_bits"
    description = (
        "Per-layer weight bit widths (1, 2, 3, 4, 8, 16) of an EfficientFormerV2 (s0 .. l); "
        "the stem and the classifier heads at 8 bits."
    )
    base_class = EfficientFormerV2Space
    default_architecture = "s0"
    fixed_kinds = ("effv2.stem", "effv2.head")


__all__ = [
    "ASSIGNED_BITS",
    "BITSFUSION_MEAN_BITS",
    "BIT_OPTIONS",
    "CHOICE_PREFIX",
    "FALLBACK_BITS",
    "SENSITIVITY_ETA",
    "EfficientFormerV2BitsSpace",
    "MixedPrecisionSpace",
    "PrecisionSupernet",
    "QuantLayer",
    "UNetBitsSpace",
    "WeightStorage",
    "assign_bits",
    "fake_quantize",
    "quantizable_modules",
    "quantize_module",
    "weight_storage",
]
