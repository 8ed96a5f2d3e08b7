r"""An evidence-accumulation task whose answer lies further back than a membrane time constant.

Modelled on the cue-accumulation task of Morcos & Harvey (*Nat. Neurosci.* 19:1679, 2016) as used for
spiking networks by Bellec et al., "A solution to the learning dilemma for recurrent networks of
spiking neurons", *Nat. Commun.* 11:3625, 2020. Four groups of ``units`` input units each::

    group 0  left cues     a burst (each unit spikes with prob. cue_rate per step) in the slots of left cues
    group 1  right cues    the same for right cues
    group 2  recall        a burst during the recall period
    group 3  noise         spikes with prob. noise_rate at every step

    time:  | cue 1 | gap | cue 2 | gap | ... | cue n | gap |     delay     |   recall   |
           0                                         cue_end      recall_start         steps

Each of the ``cues`` (odd) cue slots is left or right with probability ½; the class is the side that
had more cues (0 = left, 1 = right). The recall period, the only period in which the network's output
is read, has the same input statistics for both classes, so the answer has to be carried over the
delay (``delay`` steps plus the last gap; longer than the membrane time constant of ``snn.Leaky`` with
``beta = 0.9``, about 10 steps, and of an Izhikevich neuron near rest, a few ms).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["EvidenceData", "make_evidence"]


@dataclasses.dataclass(frozen=True)
class EvidenceData:
    """Generated trials: ``raster`` uint8 ``[N, T, 4·units]``, ``labels`` int64 ``[N]`` (0 left, 1 right),
    ``sides`` int64 ``[N, cues]`` (side of each cue), and the time layout (steps)."""

    raster: np.ndarray
    labels: np.ndarray
    sides: np.ndarray
    cue_end: int
    recall_start: int
    steps: int
    units: int

    @property
    def inputs(self) -> int:
        return int(self.raster.shape[2])


def make_evidence(samples: int = 1200, cues: int = 5, cue_steps: int = 6, gap_steps: int = 4,
                  delay: int = 30, recall_steps: int = 20, units: int = 10, cue_rate: float = 0.4,
                  recall_rate: float = 0.4, noise_rate: float = 0.05, seed: int = 0) -> EvidenceData:
    """Draw ``samples`` trials of the cue-accumulation task.

    Args:
        samples: number of trials.
        cues: cue slots per trial (odd, so that there are no ties).
        cue_steps, gap_steps: steps of a cue burst and of the silence after it.
        delay: steps between the end of the cue period and the recall period.
        recall_steps: steps of the recall period (the readout window).
        units: input units per group (4 groups: left, right, recall, noise).
        cue_rate, recall_rate, noise_rate: spike probability per unit and step in a burst / everywhere.
        seed: seeds everything.

    Returns:
        :class:`EvidenceData` with ``steps = cues·(cue_steps + gap_steps) + delay + recall_steps``.
    """
    for name, value in (("samples", samples), ("cues", cues), ("cue_steps", cue_steps), ("units", units),
                        ("recall_steps", recall_steps)):
        if not (isinstance(value, int) and value > 0):
            raise ValueError(f"`{name}` (={value!r}) must be a positive int")
    if cues % 2 == 0:
        raise ValueError(f"`cues` (={cues}) must be odd, so that one side always has more cues")
    if gap_steps < 0 or delay < 0:
        raise ValueError(f"`gap_steps` (={gap_steps}) and `delay` (={delay}) must be >= 0")
    for name, p in (("cue_rate", cue_rate), ("recall_rate", recall_rate), ("noise_rate", noise_rate)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"`{name}` (={p!r}) must be a probability in [0, 1]")
    rng = np.random.default_rng(seed)
    slot = cue_steps + gap_steps
    cue_end = cues * slot
    recall_start = cue_end + delay
    steps = recall_start + recall_steps
    sides = rng.integers(0, 2, size=(samples, cues))
    labels = (sides.sum(1) * 2 > cues).astype(np.int64)
    rate = np.zeros((samples, steps, 4), dtype=np.float64)     # spike probability per group
    for i in range(cues):
        start = i * slot
        for side in (0, 1):
            rate[sides[:, i] == side, start:start + cue_steps, side] = cue_rate
    rate[:, recall_start:, 2] = recall_rate
    rate[:, :, 3] = noise_rate
    probs = np.repeat(rate, units, axis=2)                       # [N, T, 4·units]
    raster = (rng.random(probs.shape) < probs).astype(np.uint8)
    return EvidenceData(raster, labels, sides.astype(np.int64), cue_end, recall_start, steps, units)
