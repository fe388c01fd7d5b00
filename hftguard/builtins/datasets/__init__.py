"""Built-in offline datasets, registered through the same hook third-party plugins use.

They are deterministic stand-ins for BeaverTails, SST2, AG News and GSM8K, so the whole pipeline
runs (and is tested) without downloads; the modules are imported only when the hook is called.
"""

from __future__ import annotations

from hftguard import hookimpl


@hookimpl
def hftguard_register_datasets() -> list[type]:
    from hftguard.builtins.datasets.arithmetic import Arithmetic
    from hftguard.builtins.datasets.benign_eval import BenignEval
    from hftguard.builtins.datasets.benign_instructions import BenignInstructions
    from hftguard.builtins.datasets.harmful_compliance import HarmfulCompliance
    from hftguard.builtins.datasets.harmful_eval import HarmfulEval
    from hftguard.builtins.datasets.safety_refusals import SafetyRefusals
    from hftguard.builtins.datasets.sentiment import Sentiment
    from hftguard.builtins.datasets.topic import Topic

    return [
        SafetyRefusals,
        HarmfulCompliance,
        HarmfulEval,
        BenignEval,
        BenignInstructions,
        Sentiment,
        Arithmetic,
        Topic,
    ]
