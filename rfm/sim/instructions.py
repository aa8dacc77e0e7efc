"""Language instructions per Meta-World task: the dataset's, held-out paraphrases, and training variants.

Evaluation with `paraphrase=True` measures whether the policy follows the meaning, not a memorised string; the
training variants (`rfm train --instruction-variants metaworld`) never overlap the held-out paraphrases.
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


# task -> more phrasings, for instruction augmentation in training only (disjoint from INSTRUCTIONS[task][1:])
TRAINING_VARIANTS: dict[str, list[str]] = {
    "reach-v3": ["reach for the red ball", "move your hand to the red sphere", "touch the red marker",
                 "bring the end effector to the target", "position the gripper at the red goal"],
    "push-v3": ["push the hockey puck until it reaches the goal", "nudge the puck to the goal",
                "push the round block to the marked spot", "move the puck along the table to the goal",
                "slide the puck to the goal position"],
    "pick-place-v3": ["pick the puck up and put it on the goal", "lift the puck and set it down at the target",
                      "grasp the puck and move it to the goal", "carry the puck to the goal",
                      "pick up the disc and place it on the target"],
    "door-open-v3": ["open the door by pulling its handle", "pull the door handle to open it", "swing the door open",
                     "open up the door", "rotate the door open"],
    "drawer-open-v3": ["open the drawer by its handle", "pull the drawer open", "draw the drawer out",
                       "pull the handle to open the drawer", "get the drawer open"],
    "drawer-close-v3": ["push the drawer closed", "close the drawer by pushing it", "close the drawer all the way",
                        "push the drawer in", "get the drawer closed"],
    "button-press-topdown-v3": ["depress the button", "push the button toward the table",
                                "press the button with the gripper", "push the top button down",
                                "press the button downward"],
    "peg-insert-side-v3": ["stick the peg in the hole", "slot the peg into the hole",
                           "put the peg into the slot", "pick up the peg and insert it in the hole",
                           "fit the peg into the hole"],
    "window-open-v3": ["open the window pane sideways", "shift the window open", "open the sliding window",
                       "open the glass panel", "get the window open"],
    "window-close-v3": ["close the window pane", "shift the window closed", "close the sliding window",
                        "close the glass panel", "get the window closed"],
    "button-press-v3": ["push the button", "press the button forward", "press in the button", "push in the button",
                        "hit the button"],
    "faucet-open-v3": ["open the tap", "turn the tap on", "rotate the faucet open", "turn the faucet handle on",
                       "switch the faucet on"],
    "faucet-close-v3": ["close the tap", "turn the tap off", "rotate the faucet closed", "turn the faucet handle off",
                        "switch the faucet off"],
    "coffee-button-v3": ["press the button on the coffee machine", "push the coffee machine button",
                         "press the coffee maker's button", "turn on the coffee machine", "hit the coffee maker button"],
    "handle-press-v3": ["press down the handle", "push the lever down", "press the lever down",
                        "push the handle downward", "press the handle downward"],
    "plate-slide-v3": ["push the plate into the goal", "slide the plate to the target", "slide the plate into the slot",
                       "push the plate forward into the goal", "move the plate to the goal"],
}


def training_variants() -> dict[str, list[str]]:
    """{training instruction: [variants]} for instruction augmentation; never contains an eval paraphrase."""
    return {INSTRUCTIONS[task][0]: list(v) for task, v in TRAINING_VARIANTS.items()}


def instructions_for(task: str, paraphrase: bool = False) -> list[str]:
    """[training instruction] or, with paraphrase=True, the held-out paraphrases (never used for training)."""
    if task not in INSTRUCTIONS:
        raise KeyError(f"no instructions for task {task!r}.{did_you_mean(task, list(INSTRUCTIONS))} "
                       f"Known: {sorted(INSTRUCTIONS)}")
    table = INSTRUCTIONS[task]
    return list(table[1:]) if paraphrase else [table[0]]
