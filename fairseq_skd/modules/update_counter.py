"""The trainer's update number, carried by the model: what SKD's alpha schedule is a function of.

fairseq gives the update number to the model, not to the criterion: ``FairseqTask.train_step``
calls ``model.set_num_updates(update_num)`` before every training forward, and the trainer calls
it after loading a checkpoint; ``BaseFairseqModel.set_num_updates`` passes it to every submodule
that defines ``set_num_updates``. :func:`attach_update_counter` gives the model such a submodule,
:class:`UpdateCounter`, which has no parameters or buffers (checkpoints and optimizers do not
see it) and only records the number. The number is the trainer's, so it is the same on every
data-parallel worker and continues exactly after a resume.

The criterion attaches the counter at its first forward, which comes after fairseq has already
told the model this update's number. The counter therefore starts from the count the trainer
last logged (``num_updates``, which ``Trainer.set_num_updates`` logs at start, after loading a
checkpoint and after every update), or 0 before any; from then on ``model.set_num_updates``
keeps it current. A caller driving the model itself calls ``model.set_num_updates(n)`` (or
``attach_update_counter(model).set_num_updates(n)`` for a plain ``nn.Module``) before the
forward, as fairseq does.
"""

from fairseq.logging import metrics
from torch import nn

COUNTER_NAME = "skd_update_counter"


class UpdateCounter(nn.Module):
    """A parameter-free submodule that keeps the number given to ``set_num_updates``."""

    def __init__(self, num_updates: int = 0):
        super().__init__()
        self.num_updates = int(num_updates)

    def set_num_updates(self, num_updates):
        self.num_updates = int(num_updates)

    def forward(self):  # never called: the counter only records
        return self.num_updates

    def extra_repr(self):
        return f"num_updates={self.num_updates}"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside fairseq's distributed wrappers (``ModuleProxyWrapper``, DDP, ...),
    whose ``set_num_updates`` the wrappers forward to."""
    from fairseq.models import BaseFairseqModel

    while not isinstance(model, BaseFairseqModel) and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def trainer_update_count() -> int:
    """The update count fairseq's trainer last logged, or 0 when none was."""
    meter = metrics.get_meter("default", "num_updates")
    return int(meter.val) if meter is not None and meter.val is not None else 0


def attach_update_counter(model: nn.Module) -> UpdateCounter:
    """``model``'s UpdateCounter, attached on first use."""
    model = unwrap_model(model)
    counter = getattr(model, COUNTER_NAME, None)
    if not isinstance(counter, UpdateCounter):
        counter = UpdateCounter(trainer_update_count())
        model.add_module(COUNTER_NAME, counter)
    return counter
