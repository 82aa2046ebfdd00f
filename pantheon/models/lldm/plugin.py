"""3D-LLDM as a Pantheon plug-in (:mod:`pantheon.plugins`): what it offers and where it lives.
Importing this module loads nothing heavy."""

from ...plugins import ModelPlugin

PLUGIN = ModelPlugin(
    name="lldm",
    title="3D-LLDM",
    paper="arXiv 2603.23845: 3D-LLDM, label-guided 3D latent diffusion for hepatobiliary-phase liver MRI",
    slicer_module="LiverSynthesis",
    cards=("lldm-demo",),
    requirements=("torch", "monai", "numpy", "safetensors", "scipy", "einops"),
    worker_tasks="pantheon.models.lldm.tasks:TASKS",
    cli="pantheon.models.lldm.cli:add_commands",
    demo_weights="pantheon.train.lldm:build_lldm_demo_weights",
    order=40,
)
