"""The release gate, its reports, promotion into the registry and the offline evaluation.

The public names load on first use (PEP 562 module `__getattr__`): `promote` and `registry`
(fusionguard.gate.cli) need only the core, so they run in the serving install, which lacks the gate's data
stack (pandas, pyarrow, scipy, Great Expectations, matplotlib).
"""

from fusionguard.lazy import lazy_exports

_EXPORTS = {
    "CheckResult": "fusionguard.gate.checks",
    "EvalResult": "fusionguard.gate.evaluation",
    "EvalRow": "fusionguard.gate.evaluation",
    "GateResult": "fusionguard.gate.result",
    "ModelMeasures": "fusionguard.gate.measures",
    "Policy": "fusionguard.gate.policy",
    "evaluate": "fusionguard.gate.evaluation",
    "load_policy": "fusionguard.gate.policy",
    "measure_model": "fusionguard.gate.measures",
    "policy_from_dict": "fusionguard.gate.policy",
    "run_gate": "fusionguard.gate.runner",
    "write_eval": "fusionguard.gate.evaluation",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
