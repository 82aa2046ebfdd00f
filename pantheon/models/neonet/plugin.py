"""NeoNet as a Pantheon plug-in (:mod:`pantheon.plugins`): what it offers and where it lives.
Importing this module loads nothing heavy."""

from ...plugins import ModelPlugin

PLUGIN = ModelPlugin(
    name="neonet",
    title="NeoNet",
    paper="arXiv 2603.29449: NeoNet, perineural invasion prediction in cholangiocarcinoma MRI",
    slicer_module="PNIPredict",
    cards=("neonet-demo-neoseg", "neonet-demo-neogen", "neonet-demo-pattennet"),
    requirements=("torch", "monai", "numpy", "safetensors", "scipy", "einops"),
    worker_tasks="pantheon.models.neonet.tasks:TASKS",
    batch_pipelines="pantheon.models.neonet.batch:pipelines",
    cli="pantheon.models.neonet.cli:add_commands",
    batch_cli="pantheon.models.neonet.cli:add_batch_options",
    demo_weights="pantheon.train.neonet_demo:build_neonet_demo_weights",
    order=30,
)
