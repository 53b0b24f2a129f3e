"""ConfigMixin / @save_config: what is recorded, how it is encoded, and how it is rebuilt."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Optional, Union

import pytest
import torch
from typing_extensions import Annotated

from tinypipe import ConfigError, ConfigMixin, Ignore, SubFolder, save_config, wrap_config_mixin


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Leaf(ConfigMixin):
    @save_config
    def __init__(self, size: int = 3, tag: str = "leaf"):
        self.size = size


class Everything(ConfigMixin):
    @save_config
    def __init__(
        self,
        first,
        second: int = 2,
        skip: Ignore = None,
        skip_union: Union[Ignore, int] = 0,
        skip_optional: Optional[Ignore] = None,
        skip_annotated: Annotated[int, Ignore] = 0,
        inline: Optional[Leaf] = None,
        folder: SubFolder = None,
        folder_union: Union[SubFolder, int] = 4,
        folder_annotated: Annotated[Optional[Leaf], SubFolder] = None,
        pair: tuple = (1, 2),
        path: Path = Path("a/b"),
        color: Color = Color.RED,
        dtype: torch.dtype = torch.float16,
        nested: dict = None,
        **extra,
    ):
        self.first = first
        self.skip = skip


def make_everything(**overrides):
    arguments = dict(inline=Leaf(5), folder=Leaf(6, "sub"), folder_annotated=Leaf(7), nested={"k": [1, (2, 3)]})
    arguments.update(overrides)
    return Everything("one", **arguments)


def test_records_positional_and_defaults_not_ignored():
    obj = Everything("one", 9, None, 5, extra_key="x")
    config = dict(obj.config)
    assert config["first"] == "one" and config["second"] == 9
    assert config["pair"] == (1, 2) and config["color"] is Color.RED and config["extra_key"] == "x"
    for ignored in ("skip", "skip_union", "skip_optional", "skip_annotated"):
        assert ignored not in config


def test_config_is_read_only_and_detached_from_caller():
    values = [1, 2]
    obj = Everything("one", nested={"values": values})
    with pytest.raises(TypeError):
        obj.config["second"] = 5
    values.append(3)
    assert obj.config["nested"] == {"values": [1, 2]}


def test_round_trip_of_every_value_kind(tmp_path):
    obj = make_everything(skip="runtime")
    obj.save_pretrained(tmp_path / "repo")
    loaded = Everything.from_pretrained(tmp_path / "repo")
    assert loaded.config["pair"] == (1, 2) and isinstance(loaded.config["pair"], tuple)
    assert loaded.config["path"] == Path("a/b") and isinstance(loaded.config["path"], Path)
    assert loaded.config["color"] is Color.RED
    assert loaded.config["dtype"] is torch.float16
    assert loaded.config["nested"] == {"k": [1, (2, 3)]}
    assert isinstance(loaded.config["inline"], Leaf) and loaded.config["inline"].size == 5
    assert loaded.config["folder"].config == {"size": 6, "tag": "sub"}
    assert loaded.skip is None  # Ignore'd: not saved, the default comes back


def test_subfolder_and_inline_layout(tmp_path):
    make_everything().save_pretrained(tmp_path / "repo")
    model = tmp_path / "repo" / "model"
    config = json.loads((model / "config.json").read_text())
    leaf = f"{Leaf.__module__}.Leaf"
    assert config["folder"] == {"__module__": leaf, "__subfolder__": None}
    assert config["folder_annotated"] == {"__module__": leaf, "__subfolder__": None}
    assert config["folder_union"] == 4  # a plain value under SubFolder stays inline
    assert config["inline"] == {"__module__": leaf, "size": 5, "tag": "leaf"}
    assert json.loads((model / "folder" / "config.json").read_text())["size"] == 6
    assert config["pair"] == {"__tuple__": [1, 2]} and config["path"] == {"__path__": "a/b"}
    assert config["color"] == {"__enum__": f"{Color.__module__}.Color", "value": "red"}
    assert config["dtype"] == {"__dtype__": "float16"}


def test_json_is_deterministic(tmp_path):
    make_everything().save_pretrained(tmp_path / "one")
    make_everything().save_pretrained(tmp_path / "two")
    text = (tmp_path / "one/model/config.json").read_text()
    assert text == (tmp_path / "two/model/config.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_from_config_overrides_win():
    obj = make_everything()
    rebuilt = Everything.from_config(obj.config, second=42, skip="runtime")
    assert rebuilt.config["second"] == 42 and rebuilt.skip == "runtime"
    assert rebuilt.config["first"] == "one"


def test_from_pretrained_overrides_win(tmp_path):
    Leaf(3).save_pretrained(tmp_path / "repo")
    assert Leaf.from_pretrained(tmp_path / "repo", size=8).config["size"] == 8


def test_from_config_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config keys \['sizes'\]; valid keys are \['size', 'tag'\]"):
        Leaf.from_config({"sizes": 3})
    with pytest.raises(ConfigError, match=r"unknown arguments \['colour'\]"):
        Leaf.from_config({"size": 3}, colour="red")


def test_value_that_cannot_be_encoded_names_the_argument():
    with pytest.raises(ConfigError, match=r"Leaf argument 'tag' is a builtins.object.*Ignore"):
        Leaf(tag=object())
    with pytest.raises(ConfigError, match=r"'nested'\['k'\]\[1\] is a builtins.set"):
        Everything("one", nested={"k": [1, {2}]})
    with pytest.raises(ConfigError, match=r"'second' is nan"):
        Everything("one", second=float("nan"))
    with pytest.raises(ConfigError, match="key 3 of type int"):
        Everything("one", nested={3: "x"})


def test_prefix_and_weight_names(tmp_path):
    class Net(ConfigMixin, torch.nn.Module):
        __prefix__ = "network"
        __weight__ = "net.safetensors"

        @save_config
        def __init__(self, width: int = 4):
            super().__init__()
            self.linear = torch.nn.Linear(width, 2)

    torch.manual_seed(0)
    net = Net(6)
    net.save_pretrained(tmp_path / "repo")
    assert sorted(p.name for p in (tmp_path / "repo/network").iterdir()) == ["config.json", "filelist.txt", "net.safetensors"]
    loaded = Net.from_pretrained(tmp_path / "repo")
    sample = torch.randn(3, 6)
    assert torch.equal(loaded.linear(sample), net.linear(sample))


def test_weights_must_be_safetensors():
    with pytest.raises(TypeError, match="safetensors only"):
        class Bad(ConfigMixin):  # noqa: F841
            __weight__ = "weights.bin"


class TiedNet(ConfigMixin, torch.nn.Module):
    @save_config
    def __init__(self, vocab: int = 10, width: int = 4):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.head = torch.nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.full((1,), 2.0), persistent=False)

    def forward(self, ids):
        return self.head(self.embed(ids)) * self.scale


def test_module_with_tied_weights_and_buffers_round_trips(tmp_path):
    torch.manual_seed(0)
    net = TiedNet()
    with torch.no_grad():
        net.embed.weight.add_(1.0)
    net.save_pretrained(tmp_path / "repo")
    loaded = TiedNet.from_pretrained(tmp_path / "repo")
    ids = torch.tensor([1, 2, 3])
    assert torch.equal(loaded(ids), net(ids))
    assert loaded.head.weight is loaded.embed.weight


def test_init_without_save_config_is_refused():
    with pytest.raises(TypeError, match="must be decorated with @save_config"):
        class Forgot(ConfigMixin):  # noqa: F841
            def __init__(self, x=1):
                pass


def test_subclass_records_its_own_arguments():
    class Child(Leaf):
        @save_config
        def __init__(self, depth: int = 2):
            super().__init__(size=10)

    assert Child(3).config == {"depth": 3}


def test_wrap_config_mixin_keeps_class_and_records_arguments(tmp_path):
    class Plain:
        """A plain class."""

        def __init__(self, width=2):
            self.width = width

    Wrapped = wrap_config_mixin(Plain)
    assert Wrapped.__name__ == "Plain" and Wrapped.__doc__ == "A plain class."
    assert Wrapped(width=7).config == {"width": 7}
    assert wrap_config_mixin(Wrapped) is Wrapped


def test_varargs_and_kwargs_round_trip_through_save_pretrained_and_from_config(tmp_path):
    class Stack(ConfigMixin):
        @save_config
        def __init__(self, first, *layers, scale=1.0, **extra):
            self.state = (first, layers, scale, extra)

    model = Stack(8, 16, 32, scale=0.5, activation="gelu")
    model.save_pretrained(tmp_path / "repo")
    assert Stack.from_pretrained(tmp_path / "repo").state == (8, (16, 32), 0.5, {"activation": "gelu"})
    assert Stack.from_config(model.config).state == model.state
    assert Stack.from_config(model.config, layers=(4,)).state == (8, (4,), 0.5, {"activation": "gelu"})  # the caller wins
    assert Stack.from_config({"first": 1}).state == (1, (), 1.0, {})


def test_subfolder_on_varargs_is_refused_when_the_class_is_defined():
    with pytest.raises(ConfigError, match=r"\*parts cannot be a SubFolder"):
        class Bad(ConfigMixin):
            @save_config
            def __init__(self, *parts: SubFolder):
                self.parts = parts


class PicksItsDefault(ConfigMixin):
    @save_config
    def __init__(self, width: Optional[int] = None, depth: int = 2):
        if width is None:
            self._record(width=8 * depth)  # the value None stood for, found while building


def test_a_value_init_records_for_a_none_is_kept_and_rebuilds_the_same(tmp_path):
    picked = PicksItsDefault(depth=3)
    assert dict(picked.config) == {"width": 24, "depth": 3}
    picked.save_pretrained(tmp_path)
    assert dict(PicksItsDefault.from_pretrained(tmp_path).config) == {"width": 24, "depth": 3}
    assert dict(PicksItsDefault(width=5).config) == {"width": 5, "depth": 2}
