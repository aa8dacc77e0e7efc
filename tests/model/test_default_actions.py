"""The bundled default checkpoint keeps its behaviour: the same actions on inputs recorded when it was trained."""

from pathlib import Path

import numpy as np

from rfm.model.policy import RFMPolicy

ROOT = Path(__file__).resolve().parents[2]


def test_default_checkpoint_gives_the_recorded_actions():
    rec = np.load(ROOT / "tests" / "fixtures" / "default_actions.npz")
    policy = RFMPolicy.from_pretrained(ROOT / "checkpoints" / "default")
    actions = policy.predict(rec["images"], rec["state"], [str(s) for s in rec["instructions"]])
    assert actions.shape == rec["actions"].shape
    # 1e-5: the number of torch threads changes the order of float sums (about 5e-6 between one and two threads);
    # a changed layer or weight moves actions by orders of magnitude more
    np.testing.assert_allclose(actions, rec["actions"], rtol=0, atol=1e-5)
