"""NIM-compatible OpenAI API server over the vLLM engine."""

__all__ = ["__version__"]

__version__ = "0.1.0"
