"""NEMESIS as a Pantheon plug-in (:mod:`pantheon.plugins`): what it offers and where it lives.
Importing this module loads nothing heavy."""

from ...plugins import ModelPlugin

PLUGIN = ModelPlugin(
    name="nemesis",
    title="NEMESIS",
    paper="arXiv 2604.01612: NEMESIS, self-supervised CT foundation model (IEEE AICAS 2026)",
    slicer_module="NemesisSlicer",
    cards=("nemesis-demo", "nemesis-demo-probe", "nemesis-mae-768"),
    requirements=("torch", "monai", "numpy", "einops", "safetensors", "scikit-learn", "scipy"),
    worker_tasks="pantheon.models.nemesis.tasks:TASKS",
    batch_pipelines="pantheon.models.nemesis.batch:pipelines",
    cli="pantheon.models.nemesis.cli:add_commands",
    batch_cli="pantheon.models.nemesis.cli:add_batch_options",
    demo_weights="pantheon.train.demo_weights:build_demo_weights",
    order=10,
)
