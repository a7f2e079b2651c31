"""The ``imagenet`` model source: torchvision's ImageNet MobileNetV2 as a CAM network over the
20 PASCAL VOC classes, with no training (image-level ImageNet labels are WSSS's first stage on
real photos).

- :mod:`wsss.imagenet.table`: the checked-in ImageNet -> VOC table (``imagenet_voc.tsv``, built
  by :mod:`wsss.imagenet.build_table` from WordNet 3.0);
- :mod:`wsss.imagenet.network`: the network (class scores and CAMs of the grouped classes);
- :mod:`wsss.imagenet.export`: its ONNX export and Triton ensembles (``imagenet_cam``,
  ``imagenet_segment``).
"""
