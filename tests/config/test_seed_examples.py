"""The examples of SPEC section 1 / seed 002, run verbatim (only the imports and folders added)."""

import json
from typing import Union

from tinypipe import (
    BaseArgsFromConfig,
    ConfigMixin,
    FromConfig,
    Ignore,
    SubFolder,
    TrainerConfigMixin,
    copy_signature,
    save_config,
    set_from_config,
    wrap_config_mixin,
)


class Model(ConfigMixin):
    @save_config
    def __init__(self, a: Ignore = 1, b: SubFolder = 2, c: Union[Ignore, int] = 3,
                 d: Union[SubFolder, int] = 4):
        ...


class Trainer(TrainerConfigMixin):
    @save_config
    def __init__(self, train_args=None):
        self.train_args = train_args

    @set_from_config
    def train(self, epoch: FromConfig):
        self.trained_epochs = epoch
        return epoch


class TrainConfig(BaseArgsFromConfig):
    @copy_signature(Trainer.train)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)


class PlainClass:
    def __init__(self, width=8, name="plain"):
        self.width = width
        self.name = name


def test_model_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = Model()
    model.save_pretrained("config_path")         # writes config_path/model/config.json (+ filelist.txt)
    same = Model.from_pretrained("config_path")   # rebuilds it
    assert isinstance(same, Model) and same.config == model.config
    same = Model.from_config(model.config)
    assert same.config == {"b": 2, "d": 4}

    written = json.loads((tmp_path / "config_path/model/config.json").read_text())
    assert written == {"__module__": f"{Model.__module__}.Model", "__version__": "0.1.0", "b": 2, "d": 4}
    assert sorted(p.name for p in (tmp_path / "config_path/model").iterdir()) == ["config.json", "filelist.txt"]


def test_trainer_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_config = TrainConfig(2)
    trainer = Trainer(train_config=train_config)  # `<method>_config` is accepted for every
    trainer.save_pretrained("model_config")       # @set_from_config method, saved as a sub-folder
    new_trainer = trainer.from_pretrained("model_config")
    assert new_trainer.train() == 2    # epoch=2, from the saved config
    assert new_trainer.train(4) == 4   # epoch=4: the caller wins

    assert (tmp_path / "model_config/trainer/train_config/config.json").is_file()
    parent = json.loads((tmp_path / "model_config/trainer/config.json").read_text())
    assert parent["train_config"] == {"__module__": f"{TrainConfig.__module__}.TrainConfig", "__subfolder__": None}
    assert parent["train_args"] is None


def test_wrap_config_mixin_example(tmp_path):
    Wrapped = wrap_config_mixin(PlainClass)          # adds the mixin to an existing class
    model = Wrapped(16)
    assert isinstance(model, ConfigMixin) and isinstance(model, PlainClass)
    assert model.config == {"width": 16, "name": "plain"}
    model.save_pretrained(tmp_path / "repo")
    loaded = Wrapped.from_pretrained(tmp_path / "repo")
    assert type(loaded) is Wrapped and loaded.width == 16


def test_seed_002_loads_a_repo_placed_in_the_cache_and_calls_the_model(tmp_path, monkeypatch):
    import numpy as np

    from tinypipe import AutoModelPipeline
    from tinypipe.models import CausalLMPipeline, DiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    DiffusionPipeline("tinypipe/tiny-sd").save_pretrained(tmp_path / "model_cache_path" / "me" / "model_repo")  # placed by hand
    model = AutoModelPipeline.from_pretrained(tmp_path / "model_cache_path", "me/model_repo")
    pred = model("a red circle", num_inference_steps=2, height=32, width=32, seed=1)
    expected = model.generate("a red circle", num_inference_steps=2, height=32, width=32, seed=1)
    assert np.array_equal(np.asarray(pred[0]), np.asarray(expected[0]))
    language_model = CausalLMPipeline("tinypipe/tiny-llama")
    assert language_model("Once upon", max_new_tokens=4) == language_model.generate("Once upon", max_new_tokens=4)
