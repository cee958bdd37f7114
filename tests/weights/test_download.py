"""Released checkpoints by name, without the internet: a server on 127.0.0.1, a fake hub cache, offline."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from lightning_blip.cli_pretrained import main as list_command
from lightning_blip.models import BlipModel
from lightning_blip.weights import registry
from lightning_blip.weights.download import PretrainedNotFound, resolve_pretrained
from lightning_blip.weights.registry import FORMATS, REGISTRY, Pretrained, get_pretrained

PAYLOAD = b"tiny weights file " * 1000


class _Server(http.server.BaseHTTPRequestHandler):
    """Serves ``PAYLOAD`` at ``/ok.pth``; ``/cut.pth`` announces it whole and stops half-way."""

    requests: ClassVar[list[str]] = []

    def do_HEAD(self) -> None:
        self._headers()

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        self._headers()
        self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2] if self.path == "/cut.pth" else PAYLOAD)

    def _headers(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Server.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LIGHTNING_BLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LIGHTNING_BLIP_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "cache"


def _register(monkeypatch, *entries: Pretrained) -> None:
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, *entries))


def test_a_url_is_downloaded_once_then_read_from_the_cache(server, cache, monkeypatch):
    digest = hashlib.sha256(PAYLOAD).hexdigest()[:8]
    _register(
        monkeypatch, Pretrained("tiny", f"{server}/ok.pth", "salesforce", "BlipModel", "t", sha256=digest)
    )
    path, entry = resolve_pretrained("tiny")
    assert path == cache / "ok.pth" and path.read_bytes() == PAYLOAD and entry.name == "tiny"
    again, _ = resolve_pretrained("tiny")
    assert again == path and _Server.requests == ["/ok.pth"]  # the second call made no request
    assert [p.name for p in cache.iterdir()] == ["ok.pth"]


def test_a_checksum_mismatch_is_refused_and_nothing_is_left(server, cache, monkeypatch):
    _register(
        monkeypatch, Pretrained("tiny", f"{server}/ok.pth", "salesforce", "BlipModel", "t", sha256="00000000")
    )
    with pytest.raises(ValueError, match="checksum"):
        resolve_pretrained("tiny")
    assert list(cache.iterdir()) == []


def test_a_download_cut_short_leaves_nothing(server, cache, monkeypatch):
    _register(monkeypatch, Pretrained("tiny", f"{server}/cut.pth", "salesforce", "BlipModel", "t"))
    with pytest.raises(ValueError, match="incomplete"):
        resolve_pretrained("tiny")
    assert list(cache.iterdir()) == []


def test_offline_names_the_file_its_url_and_the_folder(cache, monkeypatch):
    monkeypatch.setenv("LIGHTNING_BLIP_OFFLINE", "1")
    entry = get_pretrained("blip-base-retrieval-coco")
    with pytest.raises(PretrainedNotFound) as raised:
        BlipModel.from_pretrained("blip-base-retrieval-coco")
    message = str(raised.value)
    assert entry.filename in message and entry.source in message and str(cache) in message


def test_a_network_failure_names_the_file_too(cache, monkeypatch):
    closed = "http://127.0.0.1:9/nothing.pth"  # the discard port: nothing listens there
    _register(monkeypatch, Pretrained("tiny", closed, "salesforce", "BlipModel", "t"))
    with pytest.raises(PretrainedNotFound, match="nothing.pth"):
        resolve_pretrained("tiny")


def test_a_hub_id_resolves_from_the_hub_cache_offline(tmp_path, monkeypatch):
    snapshot = _fake_hub_snapshot(tmp_path / "hub", "Salesforce/blip-itm-base-coco")
    (snapshot / "config.json").write_text(json.dumps({"model_type": "blip"}))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, entry = resolve_pretrained("Salesforce/blip-itm-base-coco")
    assert path == snapshot and entry.model == "BlipModel"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(PretrainedNotFound, match="Salesforce/blip-itm-base-coco"):
        resolve_pretrained("Salesforce/blip-itm-base-coco")


def _fake_hub_snapshot(hub: Path, hub_id: str) -> Path:
    """The hub cache's layout for ``hub_id`` (one snapshot, ``refs/main`` naming it); returns its folder."""
    repo = hub / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    return snapshot


def test_a_registered_hub_checkpoint_loads_by_name(tmp_path, monkeypatch):
    """A tiny transformers export in a fake hub cache becomes the same BlipModel by name, offline; a
    class the entry does not name is refused."""
    from conftest import tiny_blip

    from lightning_blip.convert.export_blip import export_transformers_blip
    from lightning_blip.models import BlipVQA

    ours = BlipModel(tiny_blip()).eval()
    hub_id = "Salesforce/tiny-itm"
    export_transformers_blip(ours, _fake_hub_snapshot(tmp_path / "hub", hub_id), task="retrieval")
    _register(monkeypatch, Pretrained(hub_id, hub_id, "transformers", "BlipModel", "retrieval", metric="-"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = BlipModel.from_pretrained(hub_id).eval()
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image(pixels), ours.encode_image(pixels))
    with pytest.raises(ValueError, match="not a BlipVQA"):
        BlipVQA.from_pretrained(hub_id)


def test_the_registry_is_well_formed():
    names = [entry.name for entry in REGISTRY]
    assert len(names) == len(set(names))
    for entry in REGISTRY:
        assert entry.format in FORMATS, entry.name
        assert entry.is_url or entry.source.count("/") == 1, entry.name  # a URL or a hub id
        if entry.model and not entry.task.startswith(("pretraining", "stage")):
            assert entry.metric, f"{entry.name}: a fine-tuned checkpoint names the number it reproduces"
    for format in ("salesforce", "lavis-blip2", "transformers"):
        assert any(e.format == format for e in REGISTRY)


def test_a_misspelled_name_is_suggested():
    with pytest.raises(KeyError, match="blip-base-retrieval-coco"):
        get_pretrained("blip-base-retreival-coco")
    with pytest.raises(PretrainedNotFound, match="blip-base-retrieval-coco"):
        resolve_pretrained("blip-base-retreival-coco")


def test_the_command_lists_and_filters(capsys):
    list_command(["flant5"])
    table = capsys.readouterr().out
    assert "blip2-flant5xl" in table and "blip-base-vqa" not in table and "63.0" in table
    list_command(["--json", "vqa"])
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"blip-base-vqa", "Salesforce/blip-vqa-base"}
    assert all("vqa" in (r["name"] + r["task"] + r["model"]).lower() for r in rows)
