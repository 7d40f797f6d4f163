"""pnnunet: a self-configuring nnU-Net for PaddlePaddle.

The folders are the pipeline: ``dataset`` → ``planning`` → ``preprocessing`` → ``training`` →
``inference`` → ``postprocessing`` / ``evaluation``; ``cli`` holds one thin module per command.
"""

# Import order: Paddle 2.6's wheel loads its own zlib, and a library that brings zlib in after it (blosc2,
# skimage.io) then crashes in inflateReset2 (segmentation fault on Paddle 2.6.2; 3.x is fine). Every pnnunet
# import loads them first, so `import pnnunet` before `import paddle` is safe on both lines. Python's own zlib
# module (gzip: the completeness check of .nii.gz files) is loaded here for the same reason.
import blosc2  # noqa: F401,E402
import skimage.io  # noqa: F401,E402
import zlib  # noqa: F401,E402

__version__ = "0.1.0"
