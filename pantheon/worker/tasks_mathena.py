"""Worker tasks for MATHENA (``mathena.*``): dental panoramic X-ray analysis.

Same contract as :mod:`pantheon.worker.tasks`: each task takes a JobContext and returns the
result document; heavy imports stay inside the functions.
"""

MATHENA_PIPELINES = {}
