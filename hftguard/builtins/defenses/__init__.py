"""Built-in defenses, registered through the same hooks a third-party plugin uses."""

from __future__ import annotations

from typing import Any

from hftguard import hookimpl


@hookimpl
def hftguard_register_alignment_defenses() -> list[Any]:
    from hftguard.builtins.defenses.antibody_align import AntibodyAlign
    from hftguard.builtins.defenses.booster import Booster
    from hftguard.builtins.defenses.repnoise import RepNoise
    from hftguard.builtins.defenses.sft import SFTAlign
    from hftguard.builtins.defenses.tvaccine import TVaccine
    from hftguard.builtins.defenses.vaccine import Vaccine

    return [SFTAlign, Vaccine, Booster, AntibodyAlign, RepNoise, TVaccine]


@hookimpl
def hftguard_register_finetune_defenses() -> list[Any]:
    from hftguard.builtins.defenses.antibody_finetune import AntibodyFinetune
    from hftguard.builtins.defenses.ewc import EWC
    from hftguard.builtins.defenses.kl import KL
    from hftguard.builtins.defenses.lisa import Lisa
    from hftguard.builtins.defenses.mixing import Mixing, MixingJoint
    from hftguard.builtins.defenses.sft import SFTFinetune

    return [SFTFinetune, AntibodyFinetune, Lisa, KL, Mixing, MixingJoint, EWC]


@hookimpl
def hftguard_register_repair_defenses() -> list[Any]:
    from hftguard.builtins.defenses.antidote import Antidote
    from hftguard.builtins.defenses.safelora import SafeLoRA

    return [SafeLoRA, Antidote]
