"""MATHENA as a Pantheon plug-in (:mod:`pantheon.plugins`): what it offers and where it lives.
Importing this module loads nothing heavy."""

from ...plugins import ModelPlugin

PLUGIN = ModelPlugin(
    name="mathena",
    title="MATHENA",
    paper="arXiv 2604.00537: MATHENA, Mamba-based tooth detection and holistic evaluation on panoramic X-rays",
    slicer_module="ToothAnalysis",
    cards=("mathena-demo-detector", "mathena-demo-hena"),
    requirements=("torch", "monai", "numpy", "safetensors", "pillow", "matplotlib"),
    worker_tasks="pantheon.models.mathena.tasks:TASKS",
    batch_pipelines="pantheon.models.mathena.batch:pipelines",
    cli="pantheon.models.mathena.cli:add_commands",
    batch_cli="pantheon.models.mathena.cli:add_batch_options",
    demo_weights="pantheon.train.mathena_demo:build_mathena_demo_weights",
    order=20,
)
