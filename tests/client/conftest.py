"""The client tests run against the same real servers as tests/serving."""

from tests.serving.conftest import server, tiny_checkpoint, tiny_runner  # noqa: F401
