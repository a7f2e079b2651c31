"""Datasets: readers for VOC, COCO, a user's folder and the built-in synthetic benchmark."""
