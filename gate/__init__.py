"""The release gate, its reports, promotion into the registry and the offline evaluation.

The public names load on first use (PEP 562 module `__getattr__`): `promote` and `registry`
(gate.cli) need only the core, so they run in the serving install, which lacks the gate's data
stack (pandas, pyarrow, scipy, Great Expectations, matplotlib).
"""

from fusionguard.lazy import lazy_exports

_EXPORTS = {
    "CheckResult": "gate.checks",
    "EvalResult": "gate.evaluation",
    "EvalRow": "gate.evaluation",
    "GateResult": "gate.result",
    "ModelMeasures": "gate.measures",
    "Policy": "gate.policy",
    "evaluate": "gate.evaluation",
    "load_policy": "gate.policy",
    "measure_model": "gate.measures",
    "policy_from_dict": "gate.policy",
    "run_gate": "gate.runner",
    "write_eval": "gate.evaluation",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
