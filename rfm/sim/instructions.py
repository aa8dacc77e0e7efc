"""Language instructions per Meta-World task: one used for training, and paraphrases never seen in training.

Evaluation with `paraphrase=True` measures whether the policy follows the meaning, not a memorised string.
"""

from __future__ import annotations

from rfm.config import did_you_mean

# task -> [training instruction, paraphrase, paraphrase, ...]
INSTRUCTIONS: dict[str, list[str]] = {
    "reach-v3": ["reach the red target", "move the gripper to the red dot", "put your hand on the target point",
                 "go to the goal position"],
    "push-v3": ["push the puck to the goal", "slide the puck over to the target", "shove the disc onto the goal spot",
                "move the puck to the target by pushing it"],
    "pick-place-v3": ["pick up the puck and place it at the goal", "grab the puck and put it on the target",
                      "lift the disc and drop it at the goal", "take the puck to the target location"],
    "door-open-v3": ["open the door", "pull the door open", "swing the door open by its handle", "get the door open"],
    "drawer-open-v3": ["open the drawer", "pull the drawer out", "slide the drawer open", "pull out the drawer"],
    "drawer-close-v3": ["close the drawer", "push the drawer shut", "slide the drawer closed", "shut the drawer"],
    "button-press-topdown-v3": ["press the button from above", "push the button down", "press down on the red button",
                                "hit the button from the top"],
    "peg-insert-side-v3": ["insert the peg into the hole", "put the peg in the hole from the side",
                           "slide the peg into the opening", "push the peg sideways into the hole"],
    "window-open-v3": ["open the window", "slide the window open", "push the window to open it",
                       "move the window to the open position"],
    "window-close-v3": ["close the window", "slide the window shut", "push the window closed", "shut the window"],
    "button-press-v3": ["press the button", "push the button in", "press the button in front of you",
                        "push the button forward"],
    "faucet-open-v3": ["turn the faucet on", "open the faucet", "rotate the faucet handle open", "turn on the tap"],
    "faucet-close-v3": ["turn the faucet off", "close the faucet", "rotate the faucet handle closed",
                        "turn off the tap"],
    "coffee-button-v3": ["press the coffee machine button", "push the button on the coffee maker",
                         "start the coffee machine", "hit the coffee button"],
    "handle-press-v3": ["press the handle down", "push the handle down", "press down on the lever handle",
                        "push down the handle"],
    "plate-slide-v3": ["slide the plate into the goal", "push the plate to the target", "slide the plate forward",
                       "move the plate into the slot"],
}


def instructions_for(task: str, paraphrase: bool = False) -> list[str]:
    """[training instruction] or, with paraphrase=True, the held-out paraphrases (never used for training)."""
    if task not in INSTRUCTIONS:
        raise KeyError(f"no instructions for task {task!r}.{did_you_mean(task, list(INSTRUCTIONS))} "
                       f"Known: {sorted(INSTRUCTIONS)}")
    table = INSTRUCTIONS[task]
    return list(table[1:]) if paraphrase else [table[0]]
