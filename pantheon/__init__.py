"""Pantheon: research models for medical imaging behind 3D Slicer panels and a command line.

Models (one sub-package each under ``pantheon.models``; shared SSM kernels in ``pantheon.models.ssm``):

- NEMESIS (arXiv 2604.01612): self-supervised CT foundation model (masked autoencoder on 128^3
  superpatches); loads the published weights; organ probe, feature PCA, similarity, reconstruction.
- MATHENA (arXiv 2604.00537, reconstruction): panoramic dental X-ray analysis; MATHE tooth detector
  with FDI numbering and HENA per-tooth caries / anomaly / developmental-stage heads.
- NeoNet (arXiv 2603.29449, reconstruction): perineural invasion prediction in cholangiocarcinoma
  MRI; NeoSeg + TLCR crop, PattenNet classifier, NeoGen mask-conditioned latent diffusion.

Each model declares itself once (``pantheon.models.<name>.plugin``, registry in ``pantheon.plugins``);
the command line, worker, batch runner and model cards loop over the declared models.

Around them: ``pipelines`` (one per model, whole images in, results on the input's grid),
``train`` (training and the demo weights), ``registry`` (model cards, bundled demo weights,
verified downloads), ``io`` / ``export`` (images in and out, DICOM SEG), ``synth`` and
``sampledata`` (synthetic phantoms, sample cases), ``batch`` (resumable batch runs), ``worker``
(the background process the Slicer panels talk to), ``cli`` (the ``pantheon`` command),
``runtime`` (device, precision, weights lookup) and ``metrics`` (AUROC, Dice, mAP@50).

The core never imports ``slicer``, ``qt``, ``ctk`` or ``vtk`` at module level; only
``pantheon.slicerbridge`` touches Slicer, inside functions.
"""

__version__ = "0.1.0"
