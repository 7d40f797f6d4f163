"""pnnunet: a self-configuring nnU-Net for PaddlePaddle.

The folders are the pipeline: ``dataset`` → ``planning`` → ``preprocessing`` → ``training`` →
``inference`` → ``postprocessing`` / ``evaluation``; ``cli`` holds one thin module per command.
"""

__version__ = "0.1.0"
