"""The typed config: sections, defaults, the YAML loader, overrides and validation.

No torch here: the CLI validates a config (and answers ``--help``) without loading torch.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Names users write in YAML; models.MODEL_REGISTRY and data.TASKS are keyed by the same
# names (a test says so), so a bad name is caught here, before torch is even imported.
MODEL_TYPES = ("rnn", "lstm")
NONLINEARITIES = ("tanh", "relu", "identity")
TASKS = ("running_mean",)
TARGETS = ("all", "last")
DEVICES = ("auto", "cpu", "cuda")


EVAL_CHUNK = 256  # held-out sequences per forward pass of the evaluation (train.evaluate)
MAX_SEED = 2**63 - 1  # seeds are hashed (data.derive_seed), so any would do: this keeps them 64-bit integers


class UserError(Exception):
    """A mistake the user can fix, worded for one line of output (exit code 2, no traceback)."""


class ConfigError(UserError):
    """A user mistake in a config file or override."""


@dataclass(frozen=True)
class ModelConfig:
    type: str = field(default="rnn", metadata={"choices": MODEL_TYPES, "help": "registry name of the recurrent net"})
    num_layers: int = field(default=1, metadata={"min": 1, "max": 64, "help": "stacked recurrent layers"})
    hidden_size: int = field(default=32, metadata={"min": 1, "max": 4096, "help": "hidden state size of every layer"})
    nonlinearity: str = field(default="tanh", metadata={"choices": NONLINEARITIES,
                                                         "help": "RNN activation (ignored by lstm)"})


@dataclass(frozen=True)
class TaskConfig:
    name: str = field(default="running_mean", metadata={"choices": TASKS, "help": "synthetic task"})
    seq_len: int = field(default=10, metadata={"min": 1, "max": 100_000, "help": "timesteps per sequence"})


@dataclass(frozen=True)
class TrainSettings:
    """The training keys a comparison shares across all its models and target modes."""
    # Adam moves a weight by about lr per step whatever the gradient, so a huge lr makes the weights overflow
    lr: float = field(default=1e-4, metadata={"min_exclusive": 0.0, "max": 1000.0, "help": "Adam learning rate"})
    batch_size: int = field(default=32, metadata={"min": 1, "max": 100_000, "help": "sequences per training batch"})
    num_batches: int = field(default=5000, metadata={"min": 1, "max": 100_000_000, "help": "optimizer steps"})
    clip_grad_norm: float | None = field(default=None, metadata={"min_exclusive": 0.0,
                                                                 "help": "clip the global gradient norm (null: off)"})


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    target: str = field(default="all", metadata={"choices": TARGETS,
                                                 "help": "loss on every timestep (all) or the last one (last)"})


@dataclass(frozen=True)
class EvalConfig:
    num_sequences: int = field(default=1000, metadata={"min": 1, "max": 1_000_000,
                                                        "help": "held-out sequences for eval_mse"})


@dataclass(frozen=True)
class LogConfig:
    grad_every: int = field(default=250, metadata={
        "min": 1, "help": "batches between records of the probe batch's gradient norms (gradnorms.csv)"})


@dataclass(frozen=True)
class Config:
    name: str = field(default="run", metadata={"pattern": r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
                                               "pattern_help": "1-64 letters, digits, '.', '_' or '-'",
                                               "help": "run name, the suffix of the run folder"})
    seed: int = field(default=0, metadata={"min": 0, "max": MAX_SEED,
                                               "help": "the one seed every random draw derives from"})
    device: str = field(default="auto", metadata={"choices": DEVICES, "help": "auto picks cuda when present"})
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


MAX_SEEDS = 256  # a model's trainings share one engine, whose buffers grow with them (~1 GB at this many LSTMs)
LABEL = {"pattern": r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", "pattern_help": "1-64 letters, digits, '.', '_' or '-'"}


@dataclass(frozen=True)
class ModelEntry(ModelConfig):
    """One model of a comparison: a label plus the model keys it sets."""
    label: str | None = field(default=None, metadata={**LABEL, "help": "name of the model's sub-folder and legend entry"})

    def resolved_label(self) -> str:
        return self.label or f"{self.type}_{self.num_layers}_layer"


@dataclass(frozen=True)
class CompareConfig:
    name: str = field(default="compare", metadata={**LABEL, "help": "run name, the suffix of the run folder"})
    seed: int = field(default=0, metadata={"min": 0, "max": MAX_SEED,
                                               "help": "the one seed every random draw derives from"})
    seeds: int = field(default=1, metadata={"min": 1, "max": MAX_SEEDS, "help": "trainings per model and target, with seeds seed, "
                                                              "seed+1, ...; a model's share one engine"})
    device: str = field(default="auto", metadata={"choices": DEVICES, "help": "auto picks cuda when present"})
    targets: tuple[str, ...] = field(default=TARGETS, metadata={"choices": TARGETS,
                                                                  "help": "target modes; every model is trained in each"})
    models: tuple[ModelEntry, ...] = field(default=(
        ModelEntry(type="rnn", num_layers=1), ModelEntry(type="lstm", num_layers=1),
        ModelEntry(type="rnn", num_layers=2), ModelEntry(type="lstm", num_layers=2),
    ), metadata={"help": "models: label, type, num_layers, hidden_size, nonlinearity"})
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def train_configs(self) -> list[Config]:
        """One train config per (model, target, seed), in that order; the model's label is the run name."""
        out = []
        for entry in self.models:
            model = ModelConfig(**{f.name: getattr(entry, f.name) for f in dataclasses.fields(ModelConfig)})
            for target in self.targets:
                for seed in range(self.seed, self.seed + self.seeds):
                    out.append(Config(name=entry.resolved_label(), seed=seed, device=self.device, model=model,
                                      task=self.task, train=TrainConfig(**dataclasses.asdict(self.train),
                                                                        target=target),
                                      eval=self.eval, log=self.log))
        return out


# Keys a resumed run (train --resume) may change; any other change would make it a different experiment.
RESUMABLE_KEYS = ("device", "train.lr", "train.clip_grad_norm", "train.num_batches", "log.grad_every")

# Values per scale option at most: the notebook's slider, -5 to 5 in steps of 0.05.
MAX_SCALES = 201
MAX_ABS_SCALE = 1e6  # a float64 RNN state overflows within a few steps long before this
SCALES_HELP = "a number, a comma list (-2,-1,0,1,2) or an inclusive range start:stop:step (-5:5:0.25)"


@dataclass(frozen=True)
class GradScanConfig:
    """``rnnexp gradscan``: one freshly initialised model, its recurrent layers scaled by every (weight, bias) pair."""
    name: str = field(default="gradscan", metadata={**LABEL, "help": "run name, the suffix of the run folder"})
    seed: int = field(default=0, metadata={"min": 0, "max": MAX_SEED,
                                               "help": "seeds the initial weights and the sequence"})
    model: ModelConfig = field(default_factory=lambda: ModelConfig(hidden_size=16))
    task: TaskConfig = field(default_factory=TaskConfig)
    target: str = field(default="last", metadata={"choices": TARGETS,
                                                  "help": "loss on every timestep (all) or the last one (last)"})
    weight_scales: tuple[float, ...] = field(default=(1.0,), metadata={"help": "factors for every recurrent weight"})
    bias_scales: tuple[float, ...] = field(default=(1.0,), metadata={"help": "factors for every recurrent bias"})


def load_gradscan_config(path: Path | None, overrides: list[str] = ()) -> GradScanConfig:
    """The notebook's defaults, or the name, seed, model, task and target of a train config file; then ``overrides``."""
    raw = config_to_dict(GradScanConfig())
    source = "defaults"
    if path is not None:
        train = load_config(path, check_memory=False)  # only its model and task are used, not its training sizes
        raw.update(name=train.name, seed=train.seed, model=config_to_dict(train.model),
                   task=config_to_dict(train.task), target=train.train.target)
        source = str(path)
    try:
        raw = apply_overrides(raw, list(overrides))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return config_from_dict(raw, source + (" (with options)" if overrides else ""), GradScanConfig)


def parse_scales(text: str, option: str) -> tuple[float, ...]:
    """``-2,-1,0`` or the inclusive range ``-5:5:0.25`` as a tuple of distinct finite numbers (at most MAX_SCALES)."""
    where = f"{option} {text!r}"
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ConfigError(f"{where}: a range is start:stop:step, three numbers")
        start, stop, step = (_scale_number(p, where) for p in parts)
        if step == 0:
            raise ConfigError(f"{where}: the step of start:stop:step must not be 0")
        steps = (stop - start) / step
        if steps < 0:
            raise ConfigError(f"{where}: a step of {step:g} goes away from {stop:g}; use {-step:g}")
        if not math.isfinite(steps) or steps + 1 > MAX_SCALES + 1e-9:
            raise ConfigError(f"{where}: more than {MAX_SCALES} values; use a larger step or a shorter range")
        # Rounding keeps -5:5:0.1 at 0.3, not 0.30000000000000004; adding 0.0 turns -0.0 into 0.0.
        values = tuple(round(start + k * step, 12) + 0.0 for k in range(math.floor(steps + 1e-9) + 1))
    else:
        values = tuple(_scale_number(p, where) for p in text.split(","))
        if len(values) > MAX_SCALES:
            raise ConfigError(f"{where}: {len(values)} values; at most {MAX_SCALES}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: a value is repeated")
    return values


def _scale_number(text: str, where: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not text.strip():
        raise ConfigError(f"{where}: a value is missing; expected {SCALES_HELP}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {text.strip()!r} is not a finite number; expected {SCALES_HELP}")
    if abs(value) > MAX_ABS_SCALE:
        raise ConfigError(f"{where}: {text.strip()} is beyond +-{MAX_ABS_SCALE:g}; every state overflows long before")
    return value + 0.0


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def _coerce(f: dataclasses.Field, hint: Any, value: Any, where: str) -> Any:
    """Check one leaf value against its field; returns it as the type it is declared as."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} = null: a value is required ({_allowed(f, base)})")
    bad = ConfigError(f"{where} = {_describe(value)}: {_allowed(f, base)}")
    if base is str:
        if isinstance(value, bool):
            raise ConfigError(f"{where} = {_describe(value)}: {_allowed(f, base)} "
                              "(YAML reads unquoted yes/no/on/off as booleans: quote the value)")
        if not isinstance(value, str):
            raise bad
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise bad
        if "pattern" in f.metadata and not re.fullmatch(f.metadata["pattern"], value):
            raise bad
        return value
    if isinstance(value, bool):
        raise ConfigError(f"{where} = {_describe(value)}: {_allowed(f, base)} (YAML reads unquoted yes/no/on/off "
                          "as booleans" + ("; null turns it off)" if f.default is None else ")"))
    if isinstance(value, str):
        try:  # PyYAML reads 1e-4 (no dot) as a string; such values are the numbers they mean.
            value = int(value) if base is int and re.fullmatch(r"\s*[+-]?\d+\s*", value) else float(value.strip())
        except ValueError:
            raise bad from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad
    if base is int:
        if isinstance(value, float) and (not value.is_integer() or abs(value) >= 2**53):  # 2**53 + 1 has no float
            raise ConfigError(f"{where} = {_describe(value)}: {_allowed(f, base)}" + (
                " (write it as an integer: as a float it cannot be exact)" if value.is_integer() else ""))
        value = int(value)
    else:
        value = float(value)
    if "min" in f.metadata and value < f.metadata["min"]:
        raise bad
    if "min_exclusive" in f.metadata and value <= f.metadata["min_exclusive"]:
        raise bad
    if "max" in f.metadata and value > f.metadata["max"]:
        raise bad
    return value


def _allowed(f: dataclasses.Field, base: type) -> str:
    if "choices" in f.metadata:
        return "expected one of " + ", ".join(f.metadata["choices"])
    if "pattern" in f.metadata:
        return "expected " + f.metadata["pattern_help"]
    kind = {int: "an integer", float: "a number", str: "a string"}[base]
    null = " or null" if f.default is None else ""
    if "min" in f.metadata and "max" in f.metadata:
        return f"expected {kind} from {f.metadata['min']} to {f.metadata['max']}{null}"
    if "min_exclusive" in f.metadata and "max" in f.metadata:
        return f"expected {kind} > {f.metadata['min_exclusive']:g} and <= {f.metadata['max']:g}{null}"
    if "min" in f.metadata:
        return f"expected {kind} >= {f.metadata['min']}{null}"
    if "min_exclusive" in f.metadata:
        return f"expected {kind} > {f.metadata['min_exclusive']:g}{null}"
    return f"expected {kind}{null}"


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """A ``cls`` from a plain dict, checking every key and value."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} = {_describe(raw)}: expected a mapping of keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            if not prefix and cls is Config and key in ("models", "targets"):
                hint = " (this is a compare config: run it with rnnexp compare)"
            elif not prefix and cls is CompareConfig and key == "model":
                hint = " (this is a train config: run it with rnnexp train, or list it under models:)"
            elif cls is TrainSettings and key == "target":
                hint = " (a comparison lists its target modes at the top: targets: [all, last])"
            raise ConfigError(f"{prefix}{key}: unknown key{hint}; known keys here: {', '.join(fields)}")
        f = fields[key]
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, f"{prefix}{key}.")
        elif typing.get_origin(hints[key]) is tuple:
            kwargs[key] = _build_list(f, typing.get_args(hints[key])[0], value, f"{prefix}{key}")
        else:
            kwargs[key] = _coerce(f, hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _build_list(f: dataclasses.Field, item: type, raw: Any, where: str) -> tuple:
    """A tuple of ``item`` from a YAML list (non-empty, no repeats)."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where} = {_describe(raw)}: expected a non-empty list")
    if dataclasses.is_dataclass(item):
        return tuple(_build(item, value, f"{where}.{k}.") for k, value in enumerate(raw))
    values = tuple(_coerce(f, item, value, f"{where}.{k}") for k, value in enumerate(raw))
    if len(set(values)) != len(values):
        raise ConfigError(f"{where} = {_describe(raw)}: a value is repeated")
    return values


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=3e-4`` -> (["train", "lr"], 0.0003); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.lr=3e-4")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as e:
        if value.strip()[:1] in "[{":  # meant as a list or mapping: say where it breaks
            mark = getattr(e, "problem_mark", None)
            at = f" at column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"override {text!r}: YAML syntax error in the value{at} "
                              f"({getattr(e, 'problem', None) or 'unbalanced brackets?'})") from None
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """A copy of ``raw`` with dotted ``key=value`` overrides applied in order (the last one wins)."""
    merged = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for depth, part in enumerate(path):
            if isinstance(node, list):  # models.0.hidden_size=64
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {text!r}: {'.'.join(path[:depth])} has items 0 to {len(node) - 1}")
                part = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[:depth])} is not a section")
            if depth == len(path) - 1:
                node[part] = value
            else:
                child = node[part] if isinstance(node, list) or part in node else None
                if not isinstance(child, (dict, list)):
                    child = {}
                    node[part] = child
                node = child
    return merged


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw


def _merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``, section by section; lists and leaves of ``top`` replace ``base``'s."""
    merged = _deep_copy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = _deep_copy(value)
    return merged


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error, not a silent overwrite."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> dict:
    """The mapping in a YAML file; every failure is a one-line ConfigError naming the file."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file ({e.__class__.__name__}: {e})") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        kind = "YAML error" if isinstance(e, yaml.constructor.ConstructorError) else "YAML syntax error"
        raise ConfigError(f"{path}: {kind}{at}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top, found {type(raw).__name__}")
    return raw


def config_from_dict(raw: dict, source: str = "config", cls: type = Config, check_memory: bool = True) -> Any:
    """Validate a plain dict into a typed config; errors are prefixed with ``source``. ``check_memory``: refuse a
    training that would need more than half the machine's memory."""
    try:
        config = _build(cls, raw, "")
        if cls is CompareConfig:
            labels = [m.resolved_label() for m in config.models]
            repeated = sorted({label for label in labels if labels.count(label) > 1})
            if repeated:
                raise ConfigError(f"models: label {repeated[0]!r} is used twice; give each model its own label")
            for i, m in enumerate(config.models):
                if check_memory:
                    _check_memory(m, config, len(config.targets) * config.seeds, f"models.{i}.")
        elif cls is Config and check_memory:
            _check_memory(config.model, config, 1, "model.")
        return config
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def training_bytes(model: ModelConfig, seq_len: int, batch_size: int, eval_sequences: int, copies: int) -> int:
    """About the memory a training of ``copies`` copies needs at its peak: the engine's buffers (every layer's
    states, pre-activations and their gradients at every wave, seq_len + num_layers - 1 waves; rnnexp/engine.py)
    and the evaluation of the held-out sequences (EVAL_CHUNK at a time, every layer's states kept)."""
    L, H = model.num_layers, model.hidden_size
    lstm = model.type == "lstm"
    per_step = (33 if lstm else 6) * H  # floats per (wave, layer, copy, sequence)
    engine = (seq_len + L - 1) * L * copies * batch_size * per_step
    chunk = min(eval_sequences, EVAL_CHUNK)
    evaluation = chunk * seq_len * L * ((4 if lstm else 2) * H + 2 * H) + 3 * eval_sequences * seq_len
    return 4 * (engine + evaluation)  # the engine is still alive while the evaluation runs


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this system
        return None


def _too_much(need: int) -> str | None:
    """'about N GiB, more than half of this machine's M GiB' when ``need`` bytes are more than half the memory."""
    memory = _physical_memory()
    if memory is None or need <= memory / 2:
        return None
    return f"about {need / 2**30:.1f} GiB, more than half of this machine's {memory / 2**30:.1f} GiB"


def _check_memory(model: ModelConfig, config: Any, copies: int, prefix: str) -> None:
    """A ConfigError naming the size keys when a training would need more than half the machine's memory
    (it would otherwise die, or ignore Ctrl-C while torch allocates, long before it says so)."""
    need = training_bytes(model, config.task.seq_len, config.train.batch_size, config.eval.num_sequences, copies)
    too_much = _too_much(need)
    if too_much is None:
        return
    together = f" (x {copies} trainings together: targets x seeds)" if copies > 1 else ""
    raise ConfigError(
        f"{prefix}num_layers={model.num_layers}, {prefix}hidden_size={model.hidden_size}, task.seq_len="
        f"{config.task.seq_len}, train.batch_size={config.train.batch_size}, eval.num_sequences="
        f"{config.eval.num_sequences}{together}: a training would need {too_much}; lower some of them")


def check_compare_memory(config: CompareConfig, jobs: int) -> None:
    """A ConfigError when the ``jobs`` costliest models of a comparison, trained at the same time, would need more
    than half the machine's memory (each model alone is checked when the config is read)."""
    copies = len(config.targets) * config.seeds
    needs = sorted((training_bytes(m, config.task.seq_len, config.train.batch_size, config.eval.num_sequences,
                                   copies) for m in config.models), reverse=True)[:jobs]
    too_much = _too_much(sum(needs)) if len(needs) > 1 else None
    if too_much is not None:
        raise ConfigError(f"--jobs {jobs}: {len(needs)} models trained at once would need {too_much}; "
                          "lower --jobs or the sizes")


def load_config(path: Path | None, overrides: list[str] = (), cls: type = Config, check_memory: bool = True) -> Any:
    """Read, override and validate a config. ``path`` None means the defaults."""
    source = str(path) if path is not None else "defaults"
    file_raw = _merge(config_to_dict(cls()), read_yaml(path) if path is not None else {})
    try:
        # Overrides may index lists the file leaves at their defaults (models.0.hidden_size=64).
        raw = apply_overrides(file_raw, list(overrides))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    try:
        return config_from_dict(raw, source + (" (with overrides)" if overrides else ""), cls, check_memory)
    except ConfigError as e:
        if overrides:  # a mistake the file makes by itself is the file's, not the overrides'
            try:
                config_from_dict(file_raw, source, cls, check_memory=False)
            except ConfigError as alone:
                if str(alone).removeprefix(f"{source}: ") == str(e).removeprefix(f"{source} (with overrides): "):
                    raise alone from None
        raise


def config_to_dict(config: Any) -> dict:
    """The config as plain Python values (for config.yaml and checkpoints): dicts, lists, scalars."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys: ``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_to_yaml(config: Any) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def describe_fields(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf key, for the README and ``--help``."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, _describe(f.default), f.metadata.get("help", "")))
    return rows
