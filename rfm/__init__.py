"""rfm: robot foundation-model library and inference server."""

from rfm._version import __version__

__all__ = ["ModelConfig", "PolicyConfig", "RFMPolicy", "RobotInterface", "__version__", "preset"]


def __getattr__(name: str):  # lazy: `import rfm` stays cheap (no torch) for the client SDK
    if name == "RFMPolicy":
        from rfm.model.policy import RFMPolicy

        return RFMPolicy
    if name in ("RobotInterface", "PolicyConfig", "ModelConfig", "preset"):
        from rfm import config

        return getattr(config, name)
    raise AttributeError(f"module 'rfm' has no attribute {name!r}")
