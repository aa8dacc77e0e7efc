"""Language instructions per Meta-World task: the dataset's, held-out paraphrases, and training variants.

Evaluation with `paraphrase=True` measures whether the policy follows the meaning, not a memorised string; the
training variants (`rfm train --instruction-variants metaworld`) never overlap the held-out paraphrases.
"""

from __future__ import annotations

from rfm.config import did_you_mean

# task -> [training instruction, paraphrase, paraphrase, paraphrase], for all 50 Meta-World v3 tasks
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
    # the other 34 of Meta-World's 50 v3 tasks
    "assembly-v3": ["put the ring onto the peg", "place the nut over the peg", "slide the ring down onto the post",
                    "fit the nut onto the peg"],
    "basketball-v3": ["put the ball in the hoop", "dunk the ball into the basket", "drop the ball through the hoop",
                      "score a basket with the ball"],
    "bin-picking-v3": ["move the block to the other bin", "pick the cube out of its bin and drop it in the other one",
                       "transfer the block into the second bin", "carry the cube over to the empty bin"],
    "box-close-v3": ["put the lid on the box", "close the box with its lid", "place the cover on top of the box",
                     "cover the box with the lid"],
    "button-press-topdown-wall-v3": ["press the button from above behind the wall",
                                     "reach past the wall and push the button down",
                                     "press down on the button beyond the wall",
                                     "get around the wall and hit the button from the top"],
    "button-press-wall-v3": ["press the button behind the wall", "reach around the wall and push the button in",
                             "push the button beyond the wall", "get around the wall and press the button"],
    "coffee-pull-v3": ["pull the mug away from the coffee machine", "take the cup out from under the coffee maker",
                       "drag the mug back out of the coffee machine", "slide the cup away from the machine"],
    "coffee-push-v3": ["push the mug under the coffee machine", "slide the cup beneath the coffee maker",
                       "move the mug into the coffee machine", "shove the cup under the spout"],
    "dial-turn-v3": ["turn the dial", "rotate the knob", "twist the dial around", "spin the dial to the mark"],
    "disassemble-v3": ["take the ring off the peg", "lift the nut off the peg", "pull the ring up off the post",
                       "remove the nut from the peg"],
    "door-close-v3": ["close the door", "push the door shut", "swing the door closed", "shut the door"],
    "door-lock-v3": ["lock the door", "turn the lock down to lock the door", "rotate the door's lock to locked",
                     "push the lock lever down"],
    "door-unlock-v3": ["unlock the door", "turn the lock to unlock the door", "rotate the door's lock to unlocked",
                       "push the lock lever to the side"],
    "hammer-v3": ["hammer the nail into the wall", "pick up the hammer and drive the nail in",
                  "hit the nail with the hammer", "knock the nail in using the hammer"],
    "hand-insert-v3": ["put the block into the hole", "drop the cube into the hole in the table",
                       "move the block over the hole and push it in", "place the cube in the opening"],
    "handle-press-side-v3": ["press the side handle down", "push the handle down from the side",
                             "press down on the handle at the side", "push the sideways handle down"],
    "handle-pull-side-v3": ["pull the side handle up", "lift the handle up from the side", "raise the handle at the side",
                            "pull up the sideways handle"],
    "handle-pull-v3": ["pull the handle up", "lift the handle", "raise the handle", "pull up on the handle"],
    "lever-pull-v3": ["pull the lever up", "lift the lever", "raise the lever arm", "swing the lever upward"],
    "peg-unplug-side-v3": ["pull the peg out of the hole", "unplug the peg", "slide the peg out sideways",
                           "take the peg out of its socket"],
    "pick-out-of-hole-v3": ["pick the puck out of the hole", "lift the disc out of the hole",
                            "take the puck up out of the hole", "grab the puck from the hole and raise it"],
    "pick-place-wall-v3": ["pick up the puck and place it at the goal behind the wall",
                           "lift the puck over the wall and put it on the target",
                           "carry the disc past the wall to the goal", "grab the puck and set it down beyond the wall"],
    "plate-slide-back-side-v3": ["slide the plate back out sideways", "pull the plate out to the side",
                                 "draw the plate sideways out of the slot", "slide the plate out of the goal to the side"],
    "plate-slide-back-v3": ["pull the plate back out of the goal", "slide the plate back toward you",
                            "draw the plate back out of the slot", "pull the plate out of the cabinet"],
    "plate-slide-side-v3": ["slide the plate sideways into the goal", "push the plate to the side into the target",
                            "move the plate sideways into the slot", "slide the plate across into the goal"],
    "push-back-v3": ["pull the block back to the goal", "drag the block toward you to the target",
                     "slide the block backward onto the goal", "bring the block back to the goal spot"],
    "push-wall-v3": ["push the puck around the wall to the goal", "slide the puck past the wall onto the target",
                     "shove the disc around the wall to the goal spot", "push the puck to the goal behind the wall"],
    "reach-wall-v3": ["reach over the wall to the red target", "move the gripper past the wall to the red dot",
                      "put your hand on the target behind the wall", "go over the wall to the goal position"],
    "shelf-place-v3": ["put the block on the shelf", "place the cube onto the shelf", "lift the block up onto the shelf",
                       "set the cube down on the shelf"],
    "soccer-v3": ["kick the ball into the goal", "push the soccer ball into the net", "roll the ball into the goal",
                  "score a goal with the ball"],
    "stick-pull-v3": ["pull the box with the stick", "grab the stick and drag the box with it",
                      "hook the box with the stick and pull it", "draw the box toward you using the stick"],
    "stick-push-v3": ["push the box with the stick", "grab the stick and shove the box with it",
                      "use the stick to push the box forward", "move the box away by pushing it with the stick"],
    "sweep-into-v3": ["sweep the block into the hole", "brush the cube into the hole",
                      "push the block along the table into the hole", "slide the cube into the opening"],
    "sweep-v3": ["sweep the block off the table", "brush the cube off the edge of the table",
                 "push the block off the side of the table", "slide the cube over the table edge"],
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
