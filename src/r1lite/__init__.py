"""r1lite: teach a small instruct model to reason in a fixed format with GRPO."""

__version__ = "0.2.0"
