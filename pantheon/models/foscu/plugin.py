"""FOSCU's Duo-Diffusion as a Pantheon plug-in (:mod:`pantheon.plugins`): what it offers and where
it lives. Importing this module loads nothing heavy."""

from ...plugins import ModelPlugin

PLUGIN = ModelPlugin(
    name="foscu",
    title="FOSCU Duo-Diffusion",
    paper="arXiv 2603.29343: FOSCU, synthetic liver MRI with labels via Duo-Diffusion for 3D U-Net segmentation",
    cards=("foscu-demo-labelgen",),
    requirements=("torch", "monai", "numpy", "safetensors", "scipy", "einops", "matplotlib", "pynrrd"),
    worker_tasks="pantheon.models.foscu.tasks:TASKS",
    cli="pantheon.models.foscu.cli:add_commands",
    demo_weights="pantheon.train.foscu:build_foscu_demo_weights",
    order=50,
)
