"""The paper's ablations (Table 4, Tasks 1-6): PPFER with parts taken out, run through the same stages.

| task | wavelet (T&IT) | enhancers (PE) | identity controller (IBC) | compensator (FC) | its controller (FCC) |
|---|---|---|---|---|---|
| 1 | no  | yes | yes | yes | yes |
| 2 | no  | yes | no: trained with F_u  | yes | yes |
| 3 | no  | yes | yes | no  | no  |
| 4 | yes | yes | yes | yes | no: F_fc trained by MSE to the original frames |
| 5 | yes | yes | yes | no  | no  |
| 6 | yes | yes | no: trained with F_u  | no  | no  |

Without the wavelet, one U-Net (``f_frame``, the band enhancers' architecture) enhances whole frames against a
ResNet identity controller on whole frames (``c_frame``), as the paper's Figure 3 draws. "No identity
controller" is the paper's bi-optimisation: the enhancers and F_u are trained as a whole on F_u's expression
loss (Figure 4's red arrows); F_u is then trained afresh on the anonymised clips like every other row, so all
rows meet the same evaluation. Stages shared between tasks (and with PPFER's own s1, for Tasks 4 and 5) are
trained once.
"""

from __future__ import annotations

import dataclasses

import jax

from ppfer_jax.anonymised import map_clips
from ppfer_jax.nets import FRAMES, WAVELET, Privatizer, compensated_clips, to_float, to_uint8
from ppfer_jax.stage import Stage
from ppfer_jax.stages.classifiers import frame_classifier_stage
from ppfer_jax.stages.compensation import compensation_stage
from ppfer_jax.stages.joint import joint_stage
from ppfer_jax.stages.pretrain import enhancer_pretrain_stage
from ppfer_jax.stages.privacy import privacy_stage

FRAME_CONTROLLER = frame_classifier_stage("ablations/frame_controller", "pretrain_frame_controller", "c_frame",
                                          "identity", "c_frame_acc")
FRAME_ENHANCER = enhancer_pretrain_stage("ablations/frame_enhancer", "pretrain_frame_enhancer", FRAMES)
FRAME_PRIVACY = privacy_stage("ablations/frame_privacy", FRAMES, start=FRAME_ENHANCER.name,
                              sources={"c_frame": FRAME_CONTROLLER.name})


# -- the tasks


@dataclasses.dataclass(frozen=True)
class Task:
    """One ablation: what it keeps (Table 4's check marks), its stages, where its anonymiser's networks come from."""

    label: str
    components: dict
    privatizer: Privatizer
    stages: tuple[Stage, ...]
    enhancers_from: str             # stage holding the trained enhancers
    compensator_from: str | None    # stage holding the trained F_fc; None: no compensation


def _components(transform, controller, compensator, compensator_controller) -> dict:
    return dict(transform=transform, enhancers=True, controller=controller, compensator=compensator,
                compensator_controller=compensator_controller)


def _tasks() -> dict[str, Task]:
    frame_pre = (FRAME_CONTROLLER, FRAME_ENHANCER, FRAME_PRIVACY)
    t1_comp = compensation_stage("ablations/task1/compensation", FRAMES, sources={"f_frame": FRAME_PRIVACY.name})
    t2_joint = joint_stage("ablations/task2/joint", FRAMES, start=FRAME_ENHANCER.name)
    t2_comp = compensation_stage("ablations/task2/compensation", FRAMES, sources={"f_frame": t2_joint.name})
    t4_comp = compensation_stage("ablations/task4/compensation", WAVELET, controlled=False)
    t6_joint = joint_stage("ablations/task6/joint", WAVELET, start="pretrain/enhancer")
    return {
        "task1": Task("Task 1: no wavelet", _components(False, True, True, True), FRAMES,
                      frame_pre + (t1_comp,), FRAME_PRIVACY.name, t1_comp.name),
        "task2": Task("Task 2: no wavelet, no identity controller", _components(False, False, True, True), FRAMES,
                      (FRAME_ENHANCER, t2_joint, t2_comp), t2_joint.name, t2_comp.name),
        "task3": Task("Task 3: no wavelet, no compensation", _components(False, True, False, False), FRAMES,
                      frame_pre, FRAME_PRIVACY.name, None),
        "task4": Task("Task 4: compensator without its controller (MSE)", _components(True, True, True, False),
                      WAVELET, (t4_comp,), "s1/privacy", t4_comp.name),
        "task5": Task("Task 5: no compensation", _components(True, True, False, False), WAVELET, (),
                      "s1/privacy", None),
        "task6": Task("Task 6: no compensation, no identity controller", _components(True, False, False, False),
                      WAVELET, (t6_joint,), t6_joint.name, None),
    }


TASKS = _tasks()


def anonymised_clips(ctx, split: str, method: str):
    """A split anonymised by a task's networks (``method`` is the task's key)."""
    task = TASKS[method]
    variables = {n: ctx.network(n, task.enhancers_from) for n in task.privatizer.enhancers}
    if task.compensator_from is None:
        def chain(video: jax.Array) -> jax.Array:
            return to_uint8(task.privatizer.apply(ctx.nets, variables, to_float(video)))
    else:
        variables["f_fc"] = ctx.network("f_fc", task.compensator_from)

        def chain(video: jax.Array) -> jax.Array:
            return to_uint8(compensated_clips(ctx.nets, variables, video, task.privatizer))
    return map_clips(ctx, ctx.source(split), chain)


def full_components() -> dict:
    """The full framework's check marks (every component), Table 4's last row."""
    return _components(True, True, True, True)

