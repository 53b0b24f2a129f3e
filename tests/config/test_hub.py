"""Hub paths, never touching the network: offline mode, a patched download, a patched HfApi push."""

import secrets
import shutil
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import huggingface_hub.errors
import pytest

from tinypipe import AutoModelPipeline, ConfigMixin, RepoError, save_config


class Card(ConfigMixin):
    @save_config
    def __init__(self, prompt: str = "a photo of sks dog"):
        self.prompt = prompt

    def model_card_data(self):
        return {"base_model": "tinypipe/tiny-sd", "method": "LoRA", "tags": ["lora", "diffusers"],
                "prompts": {"Instance prompt": self.prompt}, "training_arguments": {"learning_rate": 5e-4}}


@pytest.fixture
def online(monkeypatch):
    """Pretend huggingface_hub is online; every hub call in these tests is patched anyway."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def published(tmp_path):
    Card().save_pretrained(tmp_path / "published")
    return tmp_path / "published"


@pytest.fixture
def fake_download(monkeypatch, published):
    calls = []

    def snapshot_download(repo_id, revision=None, local_dir=None, token=None, **kwargs):
        calls.append({"repo_id": repo_id, "revision": revision, "token": token})
        shutil.copytree(published, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_download_into_cache_and_load(tmp_path, online, fake_download):
    model = AutoModelPipeline.from_pretrained(tmp_path / "cache", "me/card", revision="v1", token="hf_secret")
    assert isinstance(model, Card) and model.prompt == "a photo of sks dog"
    assert fake_download == [{"repo_id": "me/card", "revision": "v1", "token": "hf_secret"}]
    assert (tmp_path / "cache/me/card/model/config.json").is_file()


def test_complete_cached_copy_is_reused(tmp_path, online, fake_download):
    AutoModelPipeline.from_pretrained(tmp_path / "cache", "me/card", revision="v1")
    AutoModelPipeline.from_pretrained(tmp_path / "cache", "me/card", revision="v1")
    AutoModelPipeline.from_pretrained(tmp_path / "cache", "me/card")
    assert len(fake_download) == 1
    AutoModelPipeline.from_pretrained(tmp_path / "cache", "me/card", revision="v2")
    assert [call["revision"] for call in fake_download] == ["v1", "v2"]


def test_offline_mode_reuses_the_cache_and_never_downloads(tmp_path, online, fake_download, monkeypatch):
    AutoModelPipeline.from_pretrained(tmp_path / "cache", "me/card")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert isinstance(AutoModelPipeline.from_pretrained(tmp_path / "cache", "me/card"), Card)
    with pytest.raises(RepoError, match=r"'me/other' is not in the cache folder .* offline mode is on"):
        AutoModelPipeline.from_pretrained(tmp_path / "cache", "me/other")
    assert len(fake_download) == 1


def test_interrupted_download_is_not_taken_as_complete(tmp_path, online, monkeypatch, published):
    def broken(repo_id, local_dir=None, **kwargs):
        shutil.copytree(published / "model", local_dir / "model")
        raise OSError("connection reset")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", broken)
    with pytest.raises(RepoError, match="Downloading 'me/card' .* failed: connection reset"):
        AutoModelPipeline.from_pretrained(tmp_path / "cache", "me/card")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RepoError, match="offline mode is on"):
        AutoModelPipeline.from_pretrained(tmp_path / "cache", "me/card")


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online"])
def test_repo_placed_by_hand_in_the_cache_is_used_as_it_is(tmp_path, online, fake_download, published, monkeypatch, offline):
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(published, tmp_path / "cache/me/card")  # copied there by hand: valid filelists, no download stamp
    model = AutoModelPipeline.from_pretrained(tmp_path / "cache", "me/card")
    assert isinstance(model, Card) and fake_download == []


def test_placed_repo_that_does_not_verify_is_refused_and_left_alone(tmp_path, online, fake_download, published):
    shutil.copytree(published, tmp_path / "cache/me/card")
    (tmp_path / "cache/me/card/model/config.json").write_text('{"prompt": "changed by hand"}')
    with pytest.raises(RepoError, match=r"me/card is in the cache folder but does not verify .*config.json.*remove it to download"):
        AutoModelPipeline.from_pretrained(tmp_path / "cache", "me/card")
    assert fake_download == [] and (tmp_path / "cache/me/card/model/config.json").read_text() == '{"prompt": "changed by hand"}'


class FakeApi:
    instances = []

    def __init__(self, token=None):
        self.token = token
        self.calls = []
        FakeApi.instances.append(self)

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, commit_message=None, ignore_patterns=None, delete_patterns=None):
        self.calls.append(("upload_folder", repo_id))
        self.uploaded = {path.relative_to(folder_path).as_posix(): path.read_bytes()
                         for path in Path(folder_path).rglob("*") if path.is_file()}


def test_push_to_hub_creates_repo_and_uploads_it_with_a_card(tmp_path, monkeypatch):
    FakeApi.instances.clear()
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    token = "hf_" + secrets.token_hex(12)  # random: this file itself is copied into model_code/
    repo = Card().save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="me/card", private=True, token=token)
    api = FakeApi.instances[0]
    assert api.token == token
    assert api.calls == [("create_repo", "me/card", True, True), ("upload_folder", "me/card")]
    assert not (repo / "README.md").exists()  # the card is generated into the upload, not into the user's folder
    assert api.uploaded["model/config.json"] == (repo / "model/config.json").read_bytes()
    card = api.uploaded["README.md"].decode()
    assert "library_name: diffusers" in card and "base_model: tinypipe/tiny-sd" in card
    for expected in ("- lora", "- diffusers", "a photo of sks dog", '"learning_rate": 0.0005'):
        assert expected in card
    for path in repo.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_failed_push_keeps_the_local_save_and_says_how_to_log_in(tmp_path, monkeypatch):
    class NoToken(FakeApi):
        def create_repo(self, *args, **kwargs):
            raise huggingface_hub.errors.LocalTokenNotFoundError("Token is required")

    monkeypatch.setattr(huggingface_hub, "HfApi", NoToken)
    with pytest.raises(RepoError, match=r"local repo at .* is saved and intact\. Log in with `hf auth login`"):
        Card(prompt="kept").save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="me/card", token="hf_expired")
    assert Card.from_pretrained(tmp_path / "out").prompt == "kept"


def test_push_without_repo_id(tmp_path):
    with pytest.raises(RepoError, match="needs repo_id"):
        Card().save_pretrained(tmp_path / "out", push_to_hub=True)
    assert Card.from_pretrained(tmp_path / "out").prompt == "a photo of sks dog"


def test_a_registered_builtin_name_is_written_once_never_downloaded(tmp_path, monkeypatch):
    from tinypipe.config import hub

    writes = []

    def write(folder):
        writes.append(folder)
        Card(prompt="built in").save_pretrained(folder)

    monkeypatch.setitem(hub._BUILTIN_REPOS, "tinypipe/tiny-card", write)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kwargs: pytest.fail("downloaded a built-in name"))

    first = AutoModelPipeline.from_pretrained(tmp_path / "cache", "tinypipe/tiny-card")
    again = Card.from_pretrained(tmp_path / "cache", "tinypipe/tiny-card")

    assert first.prompt == again.prompt == "built in" and len(writes) == 1
    assert sorted(path.name for path in (tmp_path / "cache" / "tinypipe").iterdir()) == ["tiny-card"]


def test_register_builtin_repo_makes_a_name_resolve(tmp_path, monkeypatch):
    from tinypipe.config import hub

    monkeypatch.setattr(hub, "_BUILTIN_REPOS", {})
    hub.register_builtin_repo("tinypipe/tiny-card", lambda folder: Card().save_pretrained(folder))

    assert (hub.resolve_repo(tmp_path, "tinypipe/tiny-card") / "model" / "config.json").is_file()
