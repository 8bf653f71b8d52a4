"""The config: every shipped file loads, defaults, overrides, and one-line errors."""
from pathlib import Path

import pytest
import torch

from rnnexp import config as config_module, engine, experiments
from rnnexp.config import (CompareConfig, Config, ConfigError, check_compare_memory, describe_fields, load_config,
                           training_bytes)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"default", "rnn_1_layer", "rnn_2_layer", "lstm_1_layer", "lstm_2_layer"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads(path):
    # compare*.yaml are `rnnexp compare` configs; every other file is a `rnnexp train` config.
    cls = CompareConfig if path.stem.startswith("compare") else Config
    cfg = load_config(path, cls=cls)
    assert isinstance(cfg, cls)
    assert cfg.name == path.stem or path.stem == "default"


def test_notebook_models_in_shipped_configs():
    for kind in ("rnn", "lstm"):
        for layers in (1, 2):
            cfg = load_config(ROOT / "configs" / f"{kind}_{layers}_layer.yaml")
            assert (cfg.model.type, cfg.model.num_layers, cfg.model.hidden_size) == (kind, layers, 32)
            assert (cfg.train.lr, cfg.train.num_batches, cfg.train.batch_size, cfg.task.seq_len) == (1e-4, 5000, 32, 10)


def test_default_config_file_lists_the_defaults():
    assert load_config(ROOT / "configs" / "default.yaml") == Config(name="default", model=Config().model.__class__(type="lstm"))


def test_overrides_last_one_wins_and_strings_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n")  # PyYAML reads 1e-4 as the string '1e-4'
    assert load_config(path).train.lr == 1e-4
    cfg = load_config(path, ["train.lr=3e-4", "model.hidden_size=64", "seed=3", "train.lr=5e-4"])
    assert (cfg.train.lr, cfg.model.hidden_size, cfg.seed) == (5e-4, 64, 3)
    assert load_config(path, ["train.clip_grad_norm=1"]).train.clip_grad_norm == 1.0


BAD = [
    # (file text, overrides, message)
    ("model:\n  hidden_size: 0\n", [], "c.yaml: model.hidden_size = 0: expected an integer from 1 to 4096"),
    ("model:\n  hidden_size: abc\n", [], "c.yaml: model.hidden_size = 'abc': expected an integer from 1 to 4096"),
    ("model:\n  num_layers: 1.5\n", [], "c.yaml: model.num_layers = 1.5: expected an integer from 1 to 64"),
    ("train:\n  batch_size: [1, 2]\n", [], "c.yaml: train.batch_size = [1, 2]: expected an integer from 1 to 100000"),
    ("train:\n  lr: -1\n", [], "c.yaml: train.lr = -1: expected a number > 0 and <= 1000"),
    ("train:\n  lr: 0\n", [], "c.yaml: train.lr = 0: expected a number > 0 and <= 1000"),
    ("train:\n  clip_grad_norm: 0\n", [], "c.yaml: train.clip_grad_norm = 0: expected a number > 0 or null"),
    ("train:\n  num_batches: 0\n", [], "c.yaml: train.num_batches = 0: expected an integer from 1 to 100000000"),
    ("task:\n  seq_len: 0\n", [], "c.yaml: task.seq_len = 0: expected an integer from 1 to 100000"),
    ("model:\n  type: gru\n", [], "c.yaml: model.type = 'gru': expected one of rnn, lstm"),
    ("model:\n  nonlinearity: sigmoid\n", [], "c.yaml: model.nonlinearity = 'sigmoid': expected one of tanh, relu, identity"),
    ("task:\n  name: copy\n", [], "c.yaml: task.name = 'copy': expected one of running_mean"),
    ("train:\n  target: first\n", [], "c.yaml: train.target = 'first': expected one of all, last"),
    ("name: off\n", [], "c.yaml: name = false: expected 1-64 letters, digits, '.', '_' or '-' (YAML reads unquoted"),
    ("name: a/b\n", [], "c.yaml: name = 'a/b': expected 1-64 letters"),
    ("model:\n  hiden_size: 3\n", [], "c.yaml: model.hiden_size: unknown key (did you mean 'model.hidden_size'?)"),
    ("modle:\n  type: rnn\n", [], "c.yaml: modle: unknown key (did you mean 'model'?)"),
    ("model: 3\n", [], "c.yaml: model = 3: expected a mapping of keys"),
    ("- 1\n- 2\n", [], "c.yaml: expected a mapping of keys at the top, found list"),
    ("model:\n  type: [rnn\n", [], "c.yaml: YAML syntax error at line 3, column 1"),
    ("name: x\nseed: 1\nname: y\n", [], "c.yaml: YAML error at line 3, column 1: key 'name' is given twice"),
    ("train:\n  lr: 1\n  lr: 2\n", [], "c.yaml: YAML error at line 3, column 3: key 'lr' is given twice"),
    ("", ["train.lr"], "c.yaml: override 'train.lr': expected key=value"),
    ("", ["=3"], "c.yaml: override '=3': expected key=value"),
    ("", ["nosuch.key=1"], "c.yaml (with overrides): nosuch: unknown key"),
    # the file's own mistakes are the file's, whatever the overrides
    ("lr: 3\n", ["train.num_batches=5"], "c.yaml: lr: unknown key"),
    ("train:\n  lr: -1\n", ["seed=3"], "c.yaml: train.lr = -1: expected a number > 0 and <= 1000"),
    ("", ["train.lr=fast"], "c.yaml (with overrides): train.lr = 'fast': expected a number > 0 and <= 1000"),
    ("", ["seed=-1"], "c.yaml (with overrides): seed = -1: expected an integer from 0 to 9223372036854775807"),
    ("log:\n  grad_every: 2.5\n", [], "c.yaml: log.grad_every = 2.5: expected an integer >= 1"),
    ("targets: [all]\n", [], "c.yaml: targets: unknown key (this is a compare config: run it with rnnexp compare)"),
    ("", ["train.clip_grad_norm=off"], "c.yaml (with overrides): train.clip_grad_norm = false: expected a number > 0 "
     "or null (YAML reads unquoted yes/no/on/off as booleans; null turns it off)"),
    ("", ["train.lr=1e308"], "c.yaml (with overrides): train.lr = '1e308': expected a number > 0 and <= 1000"),
    ("", ["model.num_layers=1000"], "c.yaml (with overrides): model.num_layers = 1000: expected an integer from 1 to 64"),
    ("", ["seed=9007199254740993.0"], "c.yaml (with overrides): seed = 9007199254740992.0: expected an integer from 0 "
     "to 9223372036854775807 (write it as an integer: as a float it cannot be exact)"),
    ("", ["seed=18446744073709551616"],
     "c.yaml (with overrides): seed = 18446744073709551616: expected an integer from 0 to 9223372036854775807"),
    ("", ["model.num_layers=64", "task.seq_len=100000"],
     "c.yaml (with overrides): model.num_layers=64, model.hidden_size=32, task.seq_len=100000, train.batch_size=32, "
     "eval.num_sequences=1000: a training would need about"),
]


@pytest.mark.parametrize("text,overrides,message", BAD, ids=[m.split(": ", 1)[1][:40] for _, _, m in BAD])
def test_bad_config_one_line_error(tmp_path, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert str(info.value).startswith(str(tmp_path / message.split(":", 1)[0]) + ":" + message.split(":", 1)[1])
    assert "\n" not in str(info.value)


def test_integers_stay_exact_however_large():
    assert load_config(None, ["seed=9007199254740993"]).seed == 9007199254740993  # 2**53 + 1: no float in between
    assert load_config(None, ["seed=3.0", "train.num_batches=1e3"]).train.num_batches == 1000


def test_every_shipped_config_fits_a_4_gib_laptop(monkeypatch):
    monkeypatch.setattr(config_module, "_physical_memory", lambda: 4 * 2**30)
    for path in SHIPPED:
        cls = CompareConfig if "models" in path.read_text() else Config
        cfg = load_config(path, cls=cls)
        if cls is CompareConfig:
            check_compare_memory(cfg, 2)


def test_models_trained_at_once_by_compare_are_checked_together(monkeypatch):
    monkeypatch.setattr(config_module, "_physical_memory", lambda: 8 * 2**30)
    cfg = load_config(None, ["task.seq_len=4000"], cls=CompareConfig)  # each model alone fits in 4 GiB
    check_compare_memory(cfg, 1)
    with pytest.raises(ConfigError) as info:
        check_compare_memory(cfg, 2)
    assert str(info.value) == ("--jobs 2: 2 models trained at once would need about 5.3 GiB, more than half of this "
                               "machine's 8.0 GiB; lower --jobs or the sizes")


def _tensors(obj) -> list[torch.Tensor]:
    """The tensors an object holds in its attributes, directly or in lists, tuples and dicts (one level deep)."""
    out = []
    for value in vars(obj).values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            out += [t for t in (item if isinstance(item, tuple) else [item]) if isinstance(t, torch.Tensor)]
    return out


def test_the_memory_estimate_covers_the_engines_buffers():
    """training_bytes' engine part against the bytes of every buffer the engine keeps (its stack's and its own: the
    parameters, gradients and Adam's moments, predictions, scratch); the margin is for a step's short-lived tensors."""
    for kind, layers in (("rnn", 1), ("rnn", 3), ("lstm", 1), ("lstm", 3)):
        cfg = load_config(None, [f"model.type={kind}", f"model.num_layers={layers}", "task.seq_len=50",
                                 "train.batch_size=16"])
        e = engine.Engine([experiments.build_seeded_model(cfg, "a") for _ in range(2)], ["all"] * 2, 1e-3)
        e.step(torch.randn(2, 1, 50, 16), torch.randn(2, 1, 50, 16))
        storages = {v.untyped_storage().data_ptr(): v.untyped_storage().nbytes()
                    for v in _tensors(e.stack) + _tensors(e)}
        ratio = training_bytes(cfg.model, 50, 16, 0, 2) / sum(storages.values())
        assert 1.0 <= ratio <= 1.5, (kind, layers, ratio)


def test_a_comparison_counts_its_trainings_together_in_the_memory_check(monkeypatch):
    monkeypatch.setattr(config_module, "_physical_memory", lambda: 8 * 2**30)
    overrides = ["task.seq_len=100000", "seeds=256"]  # 2 targets x 256 seeds of each model in one engine
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides, cls=CompareConfig)
    assert str(info.value).startswith("defaults (with overrides): models.0.num_layers=1, models.0.hidden_size=32, "
                                      "task.seq_len=100000, train.batch_size=32, eval.num_sequences=1000 (x 512 "
                                      "trainings together: targets x seeds): a training would need about")
    load_config(None, ["task.seq_len=1000", "seeds=2"], cls=CompareConfig)  # 4 trainings per model: fine


def test_an_override_meant_as_a_list_with_a_yaml_error_says_so():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["models=[{type: rnn"], cls=CompareConfig)
    assert str(info.value) == ("defaults: override 'models=[{type: rnn': YAML syntax error in the value at column 12 "
                               "(expected ',' or '}', but got '<stream end>')")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"is a folder, not a config file"):
        load_config(tmp_path)


def test_every_key_documented():
    readme = (ROOT / "README.md").read_text()
    for key, default, help_text in describe_fields():
        assert help_text, key
        assert f"`{key}`" in readme, f"README's config reference lacks {key}"


def test_a_train_config_given_to_compare_says_so(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  type: lstm\n")
    with pytest.raises(ConfigError, match=r"model: unknown key \(this is a train config: run it with rnnexp train"):
        load_config(path, cls=CompareConfig)
    path.write_text("train:\n  target: last\n")
    with pytest.raises(ConfigError, match=r"train.target: unknown key \(a comparison lists its target modes at the top"):
        load_config(path, cls=CompareConfig)
