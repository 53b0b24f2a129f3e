"""TrainerConfigMixin, @set_from_config, BaseArgsFromConfig: call time > saved config > default."""

from typing import Optional, Union

import pytest
from typing_extensions import Annotated

from tinypipe import (
    AutoTrainerPipeline,
    BaseArgsFromConfig,
    ConfigError,
    FromConfig,
    Ignore,
    TrainerConfigMixin,
    copy_signature,
    save_config,
    set_from_config,
)


class Trainer(TrainerConfigMixin):
    @save_config
    def __init__(self, name: str = "t"):
        self.name = name

    @set_from_config
    def train(self, data: Ignore = None, epoch: FromConfig = 1, lr: Union[FromConfig, float] = 0.1,
              batch: Optional[FromConfig] = None, steps: Annotated[int, FromConfig] = 5):
        return {"data": data, "epoch": epoch, "lr": lr, "batch": batch, "steps": steps}

    @set_from_config("predict_args")
    def predict(self, top_k: FromConfig = 3, **options: FromConfig):
        return {"top_k": top_k, **options}

    @set_from_config
    def evaluate(self, metric: FromConfig):
        return metric


class TrainConfig(BaseArgsFromConfig):
    @copy_signature(Trainer.train)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)


class PredictConfig(BaseArgsFromConfig):
    @copy_signature(Trainer.predict)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)


def test_precedence_call_time_then_config_then_default():
    trainer = Trainer(train_config=TrainConfig(epoch=4, lr=0.5))
    assert trainer.train() == {"data": None, "epoch": 4, "lr": 0.5, "batch": None, "steps": 5}
    assert trainer.train("d", epoch=9)["epoch"] == 9
    assert trainer.train("d", 7)["epoch"] == 7  # positional counts as given
    assert Trainer().train()["epoch"] == 1


def test_args_config_binds_positionally_over_from_config_parameters_only():
    config = TrainConfig(2, 0.3)  # `data` is not FromConfig: not part of the config
    assert dict(config.config) == {"epoch": 2, "lr": 0.3, "batch": None, "steps": 5}
    assert config.epoch == 2


def test_custom_config_name_and_kwargs_from_config(tmp_path):
    trainer = Trainer(predict_args=PredictConfig(top_k=1, temperature=0.7))
    assert trainer.predict() == {"top_k": 1, "temperature": 0.7}
    assert trainer.predict(temperature=0.1, beam=2) == {"top_k": 1, "temperature": 0.1, "beam": 2}
    trainer.save_pretrained(tmp_path / "repo")
    assert (tmp_path / "repo/trainer/predict_args/config.json").is_file()
    loaded = AutoTrainerPipeline.from_pretrained(tmp_path / "repo")
    assert type(loaded) is Trainer and loaded.predict() == {"top_k": 1, "temperature": 0.7}


def test_every_method_config_is_accepted_and_recorded():
    trainer = Trainer(train_config=TrainConfig(3), evaluate_config={"metric": "loss"})
    assert set(trainer.config) == {"name", "train_config", "predict_args", "evaluate_config"}
    assert trainer.evaluate() == "loss"


def test_dict_method_config_round_trips(tmp_path):
    Trainer(evaluate_config={"metric": "acc"}).save_pretrained(tmp_path / "repo")
    assert AutoTrainerPipeline.from_pretrained(tmp_path / "repo").evaluate() == "acc"


def test_missing_required_argument_says_where_to_give_it():
    with pytest.raises(TypeError, match=r"needs \['metric'\]: give them at call time or in evaluate_config"):
        Trainer().evaluate()


def test_unknown_keys_are_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown keys \['epochs'\]; valid keys are \['batch', 'epoch', 'lr', 'steps'\]"):
        TrainConfig(epochs=3)
    with pytest.raises(ConfigError, match=r"unknown keys \['metrc'\]"):
        Trainer(evaluate_config={"metrc": "acc"})
    with pytest.raises(ConfigError, match="must be a BaseArgsFromConfig object, a dict or None"):
        Trainer(train_config=3)
    with pytest.raises(ConfigError, match="too many positional"):
        TrainConfig(1, 2, 3, 4, 5)


def test_update_config_changes_values_and_rejects_unknown_keys():
    config = TrainConfig()
    assert config.update_config({"lr": 5e-4, "epoch": 3}) is config
    assert config.lr == 5e-4 and config.epoch == 3
    with pytest.raises(ConfigError, match=r"unknown keys \['batch_size'\]; valid keys are \['batch', 'epoch', 'lr', 'steps'\]"):
        config.update_config({"batch_size": 32})
    assert config.config["epoch"] == 3  # a refused update changes nothing


def test_trainer_from_config_rebuilds_method_configs():
    trainer = Trainer(name="x", train_config=TrainConfig(6))
    rebuilt = Trainer.from_config(trainer.config, name="y")
    assert rebuilt.name == "y" and rebuilt.train()["epoch"] == 6


def test_unknown_call_time_argument_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"Trainer.train\(\): unknown arguments \['epochs'\]; valid ones are \['batch', 'data', 'epoch', 'lr', 'steps'\]"):
        Trainer().train(epochs=3)


def test_set_method_config_replaces_one_config_and_is_saved(tmp_path):
    trainer = Trainer(train_config=TrainConfig(2), evaluate_config={"metric": "loss"})
    trainer.set_method_config("train_config", TrainConfig(9))
    assert trainer.train()["epoch"] == 9 and trainer.evaluate() == "loss"
    trainer.save_pretrained(tmp_path / "repo")
    assert AutoTrainerPipeline.from_pretrained(tmp_path / "repo").train()["epoch"] == 9
    with pytest.raises(ConfigError, match=r"has no method config 'fit_config'"):
        trainer.set_method_config("fit_config", None)


class AliasTrainer(TrainerConfigMixin):
    @save_config
    def __init__(self):
        pass

    @set_from_config(aliases={"epoch": "num_train_epochs"})
    def train(self, num_train_epochs: FromConfig = 1, epoch: FromConfig = None):
        return epoch if epoch is not None else num_train_epochs


def test_the_caller_wins_over_a_saved_alias_of_the_argument_it_gives():
    assert AliasTrainer(train_config={"epoch": 3}).train(num_train_epochs=2) == 2
    assert AliasTrainer(train_config={"num_train_epochs": 3}).train(epoch=4) == 4
    assert AliasTrainer(train_config={"epoch": 3}).train() == 3  # nothing given: the saved config as before
    with pytest.raises(ConfigError, match="epoch=1 and num_train_epochs=2 are the same setting; give one of them"):
        AliasTrainer().train(epoch=1, num_train_epochs=2)
