"""Fixtures of the Triton backend tests (helpers live in ``triton_testing.py``)."""

import pytest
import torch


@pytest.fixture
def set_tf32():
    """Set ``torch.backends.cuda.matmul.allow_tf32`` for a test and restore it after.

    Not ``monkeypatch.setattr``: that flag lives behind the module's ``__getattr__``,
    so some pytest versions record it as missing and fail to undo the patch.
    """
    old = torch.backends.cuda.matmul.allow_tf32

    def set_(enabled: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32 = enabled

    yield set_
    torch.backends.cuda.matmul.allow_tf32 = old
