"""Model definitions, one sub-package per paper."""
