"""xz_serve: the serving cluster behind XiaoZhua's understanding and dialog layer."""

__version__ = "0.1.0"

__all__ = ["__version__"]
