"""Worker tasks for NeoNet (``pni.*``): PNI prediction and NeoGen synthesis on MRI.

Same contract as :mod:`pantheon.worker.tasks`: each task takes a JobContext and returns the
result document; heavy imports stay inside the functions.
"""

NEONET_PIPELINES = {}
