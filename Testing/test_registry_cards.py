"""Model card schema, loading, saving and lookup."""

import copy
import json
import os

import pytest

from pantheon.errors import RegistryError
from pantheon.registry import CARDS_PATH_ENV, ModelCard, get_card, list_cards, load_card, save_card

SHA = "ab" * 32


def card_dict(**over):
    d = {
        "id": "test-card", "version": "1.0.0", "model": "nemesis", "task": "reconstruction",
        "description": "A test card.", "demo": True,
        "input": {"modality": "CT", "axis_order": "DHW", "intensity_window": [-175, 250],
                  "superpatch_size": [32, 32, 32], "patch_size": 8},
        "labels": [{"value": 1, "name": "liver"}, {"value": 2, "name": "spleen"}],
        "file": "test.pt", "sha256": SHA,
    }
    d.update(over)
    return d


@pytest.fixture(autouse=True)
def _no_user_cards(monkeypatch):
    monkeypatch.delenv(CARDS_PATH_ENV, raising=False)


def test_round_trip_and_save(tmp_path):
    d = card_dict(url="https://example.org/test.pt", size_bytes=10, license="CC-BY-4.0",
                  references=["arXiv:0000.00000"], extra={"probe_organs": ["liver"]})
    card = ModelCard.from_dict(d)
    assert card.to_dict() == d
    assert card.label_names == ["liver", "spleen"]
    path = save_card(card, tmp_path / "sub" / "test-card.json")
    assert load_card(path) == card
    assert [p.name for p in path.parent.iterdir()] == ["test-card.json"]  # no temp file left


def test_optional_fields_left_out():
    d = card_dict(labels=["background", "organ"])
    assert ModelCard.from_dict(d).to_dict() == d


@pytest.mark.parametrize("field, value", [
    ("id", "bad/id"), ("version", ""), ("model", "unet"), ("task", ""), ("demo", "yes"),
    ("input", []), ("labels", "liver"), ("file", "../x.pt"), ("sha256", "abc"),
    ("url", "ftp://x"), ("size_bytes", -1), ("references", "paper"), ("extra", [1]),
    ("license", 3),
])
def test_bad_field_is_named(field, value):
    with pytest.raises(RegistryError, match=f"field '{field}'"):
        ModelCard.from_dict(card_dict(**{field: value}))


@pytest.mark.parametrize("key, value", [
    ("modality", ""), ("axis_order", 3), ("intensity_window", [250, -175]),
    ("intensity_window", [0]), ("spacing", [1, -1, 1]), ("patch_size", [8, 0]), ("channels", [1]),
])
def test_bad_input_field_is_named(key, value):
    d = card_dict()
    d["input"][key] = value
    with pytest.raises(RegistryError, match=f"'input.{key}'"):
        ModelCard.from_dict(d)


@pytest.mark.parametrize("labels", [
    [{"value": 1, "name": "a"}, {"value": 1, "name": "b"}],  # repeated value
    ["a", "a"],  # repeated name
    ["a", {"value": 1, "name": "b"}],  # mixed forms
    [{"value": "1", "name": "a"}],
])
def test_bad_labels(labels):
    with pytest.raises(RegistryError, match="'labels'"):
        ModelCard.from_dict(card_dict(labels=labels))


def test_missing_and_unknown_fields():
    d = card_dict()
    del d["file"]
    with pytest.raises(RegistryError, match="'file' is missing"):
        ModelCard.from_dict(d)
    with pytest.raises(RegistryError, match="'weights'"):
        ModelCard.from_dict(card_dict(weights="x"))


def test_null_sha256_only_for_external_cards():
    with pytest.raises(RegistryError, match="'sha256'"):
        ModelCard.from_dict(card_dict(sha256=None))  # demo card
    with pytest.raises(RegistryError, match="'sha256'"):
        ModelCard.from_dict(card_dict(sha256=None, demo=False))  # no url
    card = ModelCard.from_dict(card_dict(sha256=None, demo=False, url="https://example.org/x.pt"))
    assert card.sha256 is None


def test_sha256_normalised_to_lower_case():
    assert ModelCard.from_dict(card_dict(sha256=SHA.upper())).sha256 == SHA


def test_load_card_errors_name_the_file(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text("{not json")
    with pytest.raises(RegistryError, match="broken.json"):
        load_card(p)
    p.write_text(json.dumps(card_dict(model="nope")))
    with pytest.raises(RegistryError, match=r"'test-card' \(.*broken.json\).*'model'"):
        load_card(p)


def test_builtin_official_card():
    card = get_card("nemesis-mae-768")
    assert card.url == "https://huggingface.co/whilethis/NEMESIS/resolve/main/MAE_768_0.5.pt"
    assert card.file == "MAE_768_0.5.pt"
    assert card.sha256 is None and card.demo is False
    assert card.input["modality"] == "CT" and card.input["intensity_window"] == [-175, 250]
    arch = card.extra["architecture"]
    assert (arch["embed_dim"], arch["depth"], arch["num_heads"], arch["decoder_depth"],
            arch["decoder_num_heads"]) == (768, 6, 8, 3, 8)
    assert any("2604.01612" in r for r in card.references)


def test_extra_dirs_env_and_precedence(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    save_card(ModelCard.from_dict(card_dict(id="only-a")), a / "x.json")
    official = get_card("nemesis-mae-768").to_dict()
    override = copy.deepcopy(official)
    override["sha256"] = SHA  # a user-supplied checksummed copy of a built-in card
    (b / "nemesis-mae-768.json").write_text(json.dumps(override))

    assert "only-a" in [c.id for c in list_cards([a])]
    monkeypatch.setenv(CARDS_PATH_ENV, f"{a}{os.pathsep}{b}")
    assert get_card("only-a").id == "only-a"
    assert get_card("nemesis-mae-768").sha256 == SHA

    with pytest.raises(RegistryError, match="Unknown model card 'nope'.*nemesis-mae-768"):
        get_card("nope")
    monkeypatch.setenv(CARDS_PATH_ENV, str(tmp_path / "missing"))
    with pytest.raises(RegistryError, match=CARDS_PATH_ENV):
        list_cards()


def test_duplicate_id_in_one_dir(tmp_path):
    for name in ("one.json", "two.json"):
        save_card(ModelCard.from_dict(card_dict()), tmp_path / name)
    with pytest.raises(RegistryError, match="defined twice"):
        list_cards([tmp_path])


def test_bundled_weights_are_package_data_matching_their_cards():
    """Each demo card's file ships in pantheon/registry/weights (next to cards/, so a wheel or an
    installed extension carries it) with the card's size and checksum, and nothing else does."""
    import pantheon
    from pantheon.registry import BUNDLED_WEIGHTS_DIR, CARDS_DIR, sha256_file
    assert BUNDLED_WEIGHTS_DIR.parent == CARDS_DIR.parent
    assert BUNDLED_WEIGHTS_DIR.is_relative_to(os.path.dirname(pantheon.__file__))
    demo = [c for c in list_cards() if c.demo]
    assert len(demo) >= 7
    for card in demo:
        f = BUNDLED_WEIGHTS_DIR / card.file
        assert f.is_file(), f"{card.id}: {card.file} missing from {BUNDLED_WEIGHTS_DIR}"
        assert f.stat().st_size == card.size_bytes or card.size_bytes is None
        assert sha256_file(f) == card.sha256, card.id
    others = {p.name for p in BUNDLED_WEIGHTS_DIR.iterdir()} - {c.file for c in demo}
    assert others == {f"{m}-demo-metrics.json" for m in ("nemesis", "mathena", "neonet", "lldm", "foscu")}


def test_bundled_dir_order_env_before_package(tmp_path, monkeypatch):
    from pantheon.registry import BUNDLED_ENV, BUNDLED_WEIGHTS_DIR, bundled_weight_dirs
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    monkeypatch.setenv(BUNDLED_ENV, os.pathsep.join([str(b), str(tmp_path / "missing"), str(c)]))
    assert bundled_weight_dirs([a]) == [a, b, c, BUNDLED_WEIGHTS_DIR]
