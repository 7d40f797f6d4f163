"""Compare a pnnunet plans dict with an upstream nnU-Net v2 ``nnUNetPlans.json``.

Everything planning decides must be equal; names that only say which framework's class to build
(``conv_op``, ``norm_op``, ``nonlin``; ``network_class_name`` by its last component), the plans name
inside data identifiers and ``nonlin_kwargs`` are mapped or ignored.
"""

from __future__ import annotations

from pnnunet.plans import resolve_configuration

_IGNORED_GLOBAL = {"dataset_name", "plans_name", "experiment_planner_used"}
_CLASS_KEYS = {"conv_op", "norm_op", "nonlin", "nonlin_kwargs"}


def _dim_of(op: str | None) -> int | None:
    if op is None:
        return None
    low = op.lower()
    return 2 if "2d" in low else 3 if "3d" in low else None


def _diff(path: str, a, b, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'upstream' if k in b else 'pnnunet'}")
            else:
                _diff(f"{path}.{k}", a[k], b[k], out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{path}: pnnunet {a} != upstream {b}")
        else:
            for i, (x, y) in enumerate(zip(a, b)):
                _diff(f"{path}[{i}]", x, y, out)
    elif a != b or isinstance(a, bool) != isinstance(b, bool):
        out.append(f"{path}: pnnunet {a!r} != upstream {b!r}")


def plan_differences(ours: dict, upstream: dict) -> list[str]:
    """List every difference in what planning decides; empty list = same plan."""
    out: list[str] = []
    for k in sorted((set(ours) | set(upstream)) - _IGNORED_GLOBAL - {"configurations"}):
        _diff(k, ours.get(k), upstream.get(k), out)
    our_cfgs, up_cfgs = list(ours["configurations"]), list(upstream["configurations"])
    if our_cfgs != up_cfgs:
        out.append(f"configurations: pnnunet {our_cfgs} != upstream {up_cfgs}")
    for name in [c for c in our_cfgs if c in up_cfgs]:
        a = resolve_configuration(ours, name)
        b = resolve_configuration(upstream, name)
        a_ident, b_ident = a.pop("data_identifier", ""), b.pop("data_identifier", "")
        if a_ident.split("_", 1)[-1] != b_ident.split("_", 1)[-1]:
            out.append(f"{name}.data_identifier: {a_ident} vs {b_ident}")
        a_arch, b_arch = a.pop("architecture", {}), b.pop("architecture", {})
        a_net, b_net = (str(x.get("network_class_name", "PlainConvUNet")).rsplit(".", 1)[-1] for x in (a_arch, b_arch))
        if a_net != b_net:
            out.append(f"{name}.network_class_name: pnnunet {a_net} != upstream {b_net}")
        a_kw, b_kw = dict(a_arch.get("arch_kwargs", {})), dict(b_arch.get("arch_kwargs", {}))
        for key in ("conv_op", "norm_op"):
            if _dim_of(a_kw.get(key)) != _dim_of(b_kw.get(key)):
                out.append(f"{name}.arch_kwargs.{key}: {a_kw.get(key)} vs {b_kw.get(key)} (dimension)")
        for key in _CLASS_KEYS:
            a_kw.pop(key, None)
            b_kw.pop(key, None)
        _diff(f"{name}.arch_kwargs", a_kw, b_kw, out)
        _diff(name, a, b, out)
    return out
