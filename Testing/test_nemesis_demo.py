"""The bundled demo weights: found and verified through the registry, and they really work."""

import json

import pytest

from pantheon.cli import main
from pantheon.io import read_volume
from pantheon.models.nemesis.probe import BTCV_ORGANS
from pantheon.pipelines import nemesis as nem
from pantheon.registry import BUNDLED_WEIGHTS_DIR, get_card, resolve_weights, sha256_file


@pytest.fixture(scope="module")
def demo_engine():
    return nem.load_engine(device="cpu", batch_size=8)


def test_demo_cards_point_at_verified_bundled_files(tmp_path, monkeypatch):
    monkeypatch.setenv("PANTHEON_CACHE_DIR", str(tmp_path / "empty-cache"))
    for card_id in (nem.DEMO_ENCODER_CARD, nem.DEMO_PROBE_CARD):
        card = get_card(card_id)
        assert card.demo is True and "demo" in card.description.lower()
        path = resolve_weights(card)
        assert path.parent == BUNDLED_WEIGHTS_DIR
        assert sha256_file(path) == card.sha256
        assert path.stat().st_size < 5_000_000  # committed weights stay small


def test_demo_engine_is_labelled_as_demo(demo_engine):
    notes = nem.run_notes(demo_engine)
    assert "demo" in notes["weights"] and "not for clinical use" in notes["warning"]


@pytest.mark.slow
def test_demo_probe_separates_organs_on_unseen_phantoms(demo_engine):
    from pantheon.synth import make_abdomen_phantom
    from pantheon.train.nemesis import extract_probe_samples, per_organ_auroc
    probe = nem.load_probe_for(demo_engine)
    pairs = [make_abdomen_phantom(31_000 + n) for n in range(4)]  # seeds unseen in training
    X, Y, _ = extract_probe_samples(pairs, demo_engine, stride=32)
    metrics = per_organ_auroc(probe, X, Y)
    assert metrics["mean"]["auroc"] > 0.8, metrics
    for name in ("liver", "spleen", "aorta"):
        assert metrics[name]["auroc"] > 0.75, (name, metrics[name])


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--quiet", "--seed", "7"]) == 0
    summary = json.loads(capsys.readouterr().out)
    names = {p.name for p in out.iterdir()}
    organs = {o[0].replace(" ", "_") + ".nii.gz" for o in BTCV_ORGANS}
    assert organs | {"pca.nii.gz", "preview.png", "result.json", "phantom_ct.nii.gz", "phantom_labels.nii.gz"} == names
    assert "not for clinical use" in summary["warning"]
    ct, labels = read_volume(out / "phantom_ct.nii.gz"), read_volume(out / "phantom_labels.nii.gz")
    liver = read_volume(out / "liver.nii.gz")
    assert liver.same_geometry(ct) and labels.same_geometry(ct)
    inside = liver.array[labels.array == 6].mean()
    outside = liver.array[ct.array < -900].mean()  # air around the body
    assert inside > outside + 0.2, (inside, outside)
    from PIL import Image
    with Image.open(out / "preview.png") as img:
        assert img.size[0] > 800 and img.size[1] > 300


@pytest.mark.slow
def test_demo_weight_builder_writes_loadable_weights_and_valid_cards(tmp_path):
    from pantheon.models.nemesis import load_nemesis
    from pantheon.models.nemesis.probe import load_probe
    from pantheon.registry import load_card
    from pantheon.train.demo_weights import build_demo_weights
    cards = tmp_path / "cards"
    cards.mkdir()
    summary = build_demo_weights(tmp_path / "w", steps=2, cases=3, pretrain_phantoms=1, phantom_shape=(40, 64, 64),
                                 cards_dir=cards, log=lambda m: None, recon_superpatches=2)
    enc, probe = load_card(cards / "nemesis-demo.json"), load_card(cards / "nemesis-demo-probe.json")
    assert enc.demo and probe.demo
    assert sha256_file(tmp_path / "w" / enc.file) == enc.sha256
    assert sha256_file(tmp_path / "w" / probe.file) == probe.sha256
    model = load_nemesis(tmp_path / "w" / enc.file)
    loaded, meta = load_probe(tmp_path / "w" / probe.file, enc.sha256)
    assert loaded.linear.in_features == model.embed_dim
    assert set(summary["held_out_auroc"]) == {o[0] for o in BTCV_ORGANS} | {"mean"}
