"""The Python-backend models of the model repository (``<model>/1/model.py`` re-exports one).

decode      encoded image bytes -> RGB uint8 [H, W, 3] + SIZE
preprocess  RGB -> network batch float32 [1, 3, h, w] (resize policy: wsss.serving.imaging)
densecrf    RGB + probabilities -> label map at the image size (+ probabilities on request)
cam_post    class scores + CAMs -> CAMs at the image size + class names (one per method)
"""
