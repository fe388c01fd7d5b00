"""Built-in datasets, registered through the same hook third-party plugins use.

Two families: deterministic offline stand-ins for BeaverTails, SST2, AG News and GSM8K, so the
whole pipeline runs (and is tested) without downloads; and components for the papers' real
benchmarks and the standard evaluation prompt sets (HarmBench, StrongREJECT, XSTest), read from
the Hugging Face hub or a local copy (:mod:`hftguard.data.hub`). The modules
are imported only when the hook is called.
"""

from __future__ import annotations

from hftguard import hookimpl


@hookimpl
def hftguard_register_datasets() -> list[type]:
    from hftguard.builtins.datasets.agnews import AGNews
    from hftguard.builtins.datasets.alpacaeval import AlpacaEval
    from hftguard.builtins.datasets.arithmetic import Arithmetic
    from hftguard.builtins.datasets.beavertails_evaluation import BeaverTailsEvaluation
    from hftguard.builtins.datasets.beavertails_harmful import BeaverTailsHarmful
    from hftguard.builtins.datasets.beavertails_safe import BeaverTailsSafe
    from hftguard.builtins.datasets.beavertails_test import BeaverTailsTest
    from hftguard.builtins.datasets.benign_eval import BenignEval
    from hftguard.builtins.datasets.benign_instructions import BenignInstructions
    from hftguard.builtins.datasets.gsm8k import GSM8K
    from hftguard.builtins.datasets.harmbench import HarmBench
    from hftguard.builtins.datasets.harmful_compliance import HarmfulCompliance
    from hftguard.builtins.datasets.harmful_eval import HarmfulEval
    from hftguard.builtins.datasets.repnoise_harmful import RepNoiseHarmful
    from hftguard.builtins.datasets.repnoise_refusals import RepNoiseRefusals
    from hftguard.builtins.datasets.safety_refusals import SafetyRefusals
    from hftguard.builtins.datasets.sentiment import Sentiment
    from hftguard.builtins.datasets.sst2 import SST2
    from hftguard.builtins.datasets.strongreject import StrongREJECT
    from hftguard.builtins.datasets.topic import Topic
    from hftguard.builtins.datasets.xstest import XSTest, XSTestUnsafe

    return [
        # offline stand-ins
        SafetyRefusals,
        HarmfulCompliance,
        HarmfulEval,
        BenignEval,
        BenignInstructions,
        Sentiment,
        Arithmetic,
        Topic,
        # the papers' benchmarks (hub or local copy, see docs/datasets.md)
        BeaverTailsSafe,
        BeaverTailsHarmful,
        BeaverTailsTest,
        BeaverTailsEvaluation,
        RepNoiseRefusals,
        RepNoiseHarmful,
        SST2,
        AGNews,
        GSM8K,
        AlpacaEval,
        # standard evaluation prompt sets (hub or local copy, see docs/datasets.md)
        HarmBench,
        StrongREJECT,
        XSTest,
        XSTestUnsafe,
    ]
