"""Serving side: Triton launcher and the torch-free code of the Python-backend models.

Nothing here imports torch. ``wsss.serving.server`` starts the Triton binary shipped in
``nvidia-pytriton`` on loopback; ``wsss.serving.imaging``, ``wsss.serving.maps`` and
``wsss.serving.models.*`` are imported by the Python-backend models inside Triton.
"""
