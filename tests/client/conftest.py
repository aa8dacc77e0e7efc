"""The client tests run against the same real servers as tests/serving."""

from tests.serving.conftest import (  # noqa: F401
    auth_server,
    prefix_checkpoint,
    prefix_runner,
    prefix_server,
    server,
    tiny_checkpoint,
    tiny_runner,
)
