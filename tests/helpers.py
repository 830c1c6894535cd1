"""Small helpers several test files share."""

import json


def strict_json(text):
    """Parse JSON as a strict parser would: NaN/Infinity are not JSON."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


class InterruptAt:
    """A fit callback that raises KeyboardInterrupt after `at_step` updates, as Ctrl-C would."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, state):
        if state.step == self.at_step:
            raise KeyboardInterrupt

    def on_epoch_end(self, state):
        return None

    def on_fit_end(self, state):
        return None
