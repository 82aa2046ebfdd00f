"""The model plug-in point (pantheon.plugins): the three models are declared once and every layer
loops over the declarations; a fourth model, shipped as its own package with an entry point and
no edit to Pantheon, appears in the command line, the batch runner, the worker and the registry."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pantheon.io import read_volume, write_volume
from pantheon.io.volume import Volume
from pantheon.plugins import ModelPlugin, get_plugin, plugin_names, plugins, worker_tasks
from pantheon.registry import list_cards

REPO = Path(__file__).resolve().parents[1]


def test_the_models_are_declared_once_each():
    assert plugin_names() == ("nemesis", "mathena", "neonet", "lldm", "foscu")
    # a plug-in without a Slicer module is a command-line (and worker) model; FOSCU's pairs are made in
    # 3D-LLDM's LiverSynthesis panel
    assert [p.slicer_module for p in plugins()] == ["NemesisSlicer", "ToothAnalysis", "PNIPredict", "LiverSynthesis",
                                                     None]
    assert get_plugin("mathena").title == "MATHENA" and get_plugin("lldm").title == "3D-LLDM"
    with pytest.raises(Exception, match="Unknown model 'toy'; Pantheon has nemesis, mathena, neonet, lldm, foscu"):
        get_plugin("toy")


def test_every_card_belongs_to_the_plugin_that_declares_it():
    cards = {c.id: c for c in list_cards()}
    declared = {card: p.name for p in plugins() for card in p.cards}
    assert set(declared) == set(cards), "cards shipped and cards declared by the plug-ins differ"
    for card_id, model in declared.items():
        assert cards[card_id].model == model


def test_every_declared_part_imports_and_has_the_right_shape():
    from pantheon.batch.adapter import BatchPipeline
    for p in plugins():
        for part in ("cli", "batch_cli", "demo_weights"):
            # the generators have no batch pipeline, so no batch options (yet)
            assert callable(p.load(part)) or (p.name in ("lldm", "foscu") and part == "batch_cli"), (p.name, part)
        tasks = p.tasks()
        assert tasks and all(callable(t) for t in tasks.values())
        batch = p.batch()
        assert (batch or p.name in ("lldm", "foscu")) and all(isinstance(b, BatchPipeline) for b in batch)
    from pantheon.batch.pipelines import pipeline_names
    assert pipeline_names() == ["mathena-analyze", "nemesis-organs", "nemesis-pca", "neonet-predict"]
    assert sorted(worker_tasks()) == ["foscu.generate", "lldm.synthesize", "mathena.analyze", "nemesis.atypicality",
                                      "nemesis.features", "nemesis.organs", "nemesis.pca", "nemesis.reconstruct",
                                      "nemesis.similarity", "nemesis.strokes", "nemesis.train_probe",
                                      "pni.predict", "pni.synthesize"]


def test_listing_the_plugins_loads_no_deep_learning_package():
    code = ("import sys\nfrom pantheon.plugins import plugins\nfrom pantheon.batch.pipelines import pipeline_names\n"
            "from pantheon.cli import build_parser\nbuild_parser()\n"
            "print(len(plugins()), len(pipeline_names()), sorted(m for m in ('torch', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["5", "4", "[]"]


def test_a_second_plugin_with_a_taken_name_is_refused():
    with pytest.raises(Exception, match="Two model plug-ins are named 'nemesis'"):
        from pantheon.plugins import register
        register(ModelPlugin(name="nemesis", title="Impostor"))


# ------------------------------------------------------------------ a fourth model, from outside
TOY_PLUGIN = '''
from pantheon.plugins import ModelPlugin
PLUGIN = ModelPlugin(name="toy", title="Toy", paper="none", cards=(), requirements=("numpy",),
                     worker_tasks="toymodel.parts:TASKS", batch_pipelines="toymodel.parts:pipelines",
                     cli="toymodel.parts:add_commands", batch_cli="toymodel.parts:add_batch_options",
                     resources="toymodel", order=99)
'''
TOY_PARTS = '''
from pantheon.batch.adapter import BatchPipeline
from pantheon.cliargs import NOTHING_WRITTEN, OUTPUT_HELP, add_input_limits, add_overwrite, read_input, write_outputs
from pantheon.results import Result
from pantheon.worker.tasks import read_input as worker_input
from pantheon.worker.tasks import write_outputs as worker_write


def negate(volume, scale):
    return Result(volumes={"negated": volume.with_array(-float(scale) * volume.array.astype("float32"))})


def task_negate(ctx):
    vol, _ = worker_input(ctx)
    return worker_write(negate(vol, ctx.params.get("scale", 1.0)), ctx.output_dir)


TASKS = {"toy.negate": task_negate}


def pipelines():
    return [BatchPipeline("toy-negate", lambda options: None,
                          lambda volume, context, options, progress=None: negate(volume, options.get("toy_scale") or 1),
                          "toy: minus the image", options={"toy_scale": None})]


def cmd_negate(args, progress):
    vol = read_input(args.input, args)
    return {"files": write_outputs(args, negate(vol, args.toy_scale), progress, preview=False)}


def add_commands(sub):
    toy = sub.add_parser("toy", help="the toy model")
    act = toy.add_subparsers(dest="action", required=True)
    p = act.add_parser("negate")
    p.add_argument("input")
    add_input_limits(p, "nemesis")
    p.add_argument("-o", "--output", required=True, help=OUTPUT_HELP)
    add_overwrite(p)
    p.add_argument("--format", default="nrrd")
    p.add_argument("--toy-scale", type=float, default=1.0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_negate, interrupt_note=NOTHING_WRITTEN)


def add_batch_options(p):
    p.add_argument("--toy-scale", type=float)
'''


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory):
    """A separate distribution ``toymodel`` with an entry point in group pantheon.models."""
    site = tmp_path_factory.mktemp("toy-site")
    (site / "toymodel").mkdir()
    (site / "toymodel" / "__init__.py").write_text("")
    (site / "toymodel" / "plugin.py").write_text(textwrap.dedent(TOY_PLUGIN))
    (site / "toymodel" / "parts.py").write_text(textwrap.dedent(TOY_PARTS))
    # its own card and bundled weights, inside its own package
    (site / "toymodel" / "weights").mkdir()
    (site / "toymodel" / "weights" / "toy-demo.bin").write_bytes(b"toy weights")
    (site / "toymodel" / "cards").mkdir()
    import hashlib
    (site / "toymodel" / "cards" / "toy-demo.json").write_text(json.dumps({
        "id": "toy-demo", "version": "1", "model": "toy", "task": "negation", "description": "d", "demo": True,
        "input": {"modality": "CT", "axis_order": "DHW"}, "labels": [], "file": "toy-demo.bin",
        "sha256": hashlib.sha256(b"toy weights").hexdigest()}))
    dist = site / "toymodel-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toymodel\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pantheon.models]\ntoy = toymodel.plugin:PLUGIN\n")
    image = Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4), spacing=(0.5, 0.7, 2.0), origin=(1.0, 2.0, 3.0))
    (site / "cases").mkdir()
    write_volume(image, site / "cases" / "a.nrrd")
    return site, image


def _pantheon(site, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    return subprocess.run([sys.executable, "-m", "pantheon", *args], capture_output=True, text=True, env=env,
                          cwd=site, timeout=300)


@pytest.mark.slow  # subprocesses: the command line, a batch, a worker
def test_a_fourth_model_gets_a_command(toy_site, tmp_path):
    site, image = toy_site
    proc = _pantheon(site, "toy", "negate", str(site / "cases" / "a.nrrd"), "-o", str(tmp_path / "out"),
                     "--toy-scale", "2")
    assert proc.returncode == 0, proc.stderr
    out = read_volume(tmp_path / "out" / "negated.nrrd")
    np.testing.assert_array_equal(out.array, -2.0 * image.array)
    np.testing.assert_allclose(out.spacing, image.spacing)


@pytest.mark.slow  # subprocesses: the command line, a batch, a worker
def test_a_fourth_model_gets_a_batch_pipeline(toy_site, tmp_path):
    site, image = toy_site
    proc = _pantheon(site, "batch", "toy-negate", "--input", str(site / "cases"), "-o", str(tmp_path / "b"),
                     "--toy-scale", "3", "--format", "nrrd")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["done"] == 1
    out = read_volume(tmp_path / "b" / "a" / "negated.nrrd")
    np.testing.assert_array_equal(out.array, -3.0 * image.array)


@pytest.mark.slow  # subprocesses: the command line, a batch, a worker
def test_a_fourth_model_gets_worker_tasks_and_cards(toy_site, tmp_path):
    site, image = toy_site
    from pantheon.worker.client import WorkerClient
    client = WorkerClient(env={"PYTHONPATH": str(site)}, preload=False)
    try:
        doc = client.run("toy.negate", {"scale": 4}, {"volume": str(site / "cases" / "a.nrrd")}, timeout=120)
        out = read_volume(Path(doc["output_dir"]) / doc["outputs"]["negated"]["file"])
    finally:
        client.shutdown()
    np.testing.assert_array_equal(out.array, -4.0 * image.array)
    # the registry finds the new model's card and bundled weights in its own package
    code = ("from pantheon.runtime import resolve_weights_argument\n"
            "path, card = resolve_weights_argument(None, 'toy-demo'); print(path, card.model)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert found.stdout.split() == [str(site / "toymodel" / "weights" / "toy-demo.bin"), "toy"], found.stderr
    # and takes the new model's cards only while the plug-in is there
    code = ("from pantheon.registry import ModelCard\n"
            "ModelCard.from_dict({'id': 'toy-1', 'version': '1', 'model': 'toy', 'task': 't', 'description': 'd',"
            " 'demo': True, 'input': {'modality': 'CT', 'axis_order': 'DHW'}, 'labels': [], 'file': 'toy.safetensors',"
            " 'sha256': '0' * 64}); print('ok')")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout.strip() == "ok"
    bare = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "must be one of nemesis, mathena, neonet, lldm, foscu, got 'toy'" in bare.stderr
