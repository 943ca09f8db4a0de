"""selfcorrect: multimodal self-correction.

Vision-language critics score images and answers; their verdicts drive a closed
generate -> critique -> edit loop for diffusion models and preference fine-tuning from
self-generated data. The embedded world (:mod:`selfcorrect.world`) is the default substrate.

Heavy libraries (torch, diffusers, transformers) are imported inside the functions that need
them, so importing this package and ``selfcorrect --help`` stay fast.
"""

__version__ = "0.1.0"
