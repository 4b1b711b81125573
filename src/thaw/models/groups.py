"""Ordered, named layer groups (stem, stages, head) taken from the model's own contract.

timm models describe their structure with ``group_matcher()``; ``timm.models.group_parameters`` turns it into
ordered groups (it merges "belongs to the previous group" entries such as EfficientNet's ``conv_head``/``bn2``
into the last stage and puts unmatched parameters, the classifier, last). thaw names those groups and counts
their parameters. Models without a matcher (plain ``nn.Module``, torchvision) fall back to their top-level
children, never to one single group.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from thaw.errors import ConfigError
from thaw.names import did_you_mean
from thaw.textfmt import count, pct, table

__all__ = ["LayerGroup", "layer_groups", "module_groups", "select_groups", "format_groups"]

logger = logging.getLogger(__name__)

#: Fallback grouping expands its largest container until it has at least this many groups.
_MIN_FALLBACK_GROUPS = 3


@dataclass(frozen=True)
class LayerGroup:
    """A named, ordered set of parameters that thaw freezes or trains together.

    Attributes:
        name: "stem", a module path such as "blocks.0" or "layer1", or "head" (always the last group).
        param_names: names of the parameters in this group, as in ``model.named_parameters()``.
        num_params: number of scalar parameters.
    """

    name: str
    param_names: tuple[str, ...]
    num_params: int


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _stem_patterns(matcher: dict[str, Any]) -> list[str]:
    stem = matcher.get("stem")
    if stem is None:
        return []
    if isinstance(stem, str):
        return [stem]
    return [p[0] if isinstance(p, tuple) else str(p) for p in stem]


def _module_path(param_name: str) -> list[str]:
    return param_name.split(".")[:-1]


def _group_name(params: Sequence[str], others: Iterable[str], index: int) -> str:
    """Name a group by a module path of its parameters.

    The shortest prefix of its first parameter's module path that no other group's parameter shares gives
    "blocks.0" even for a stage with a single block (its longest common prefix would be "blocks.0.0");
    when groups interleave, the longest common module prefix of the group is used.
    """
    other_list = list(others)
    parts = _module_path(params[0])
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth]) + "."
        if not any(o.startswith(prefix) for o in other_list):
            return prefix[:-1]
    common: list[str] = []
    for level in zip(*(_module_path(p) for p in params), strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common) or f"group{index}"


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _timm_groups(model: nn.Module) -> list[list[str]] | None:
    from timm.models import group_parameters

    matcher_fn = getattr(model, "group_matcher", None)
    if not callable(matcher_fn):
        return None
    try:
        matcher = matcher_fn(coarse=True)
    except NotImplementedError:
        return None
    grouped = group_parameters(model, matcher)
    return [list(grouped[k]) for k in sorted(grouped)]


def _fallback_groups(model: nn.Module) -> tuple[list[list[str]], list[str]]:
    """Top-level children that own parameters, in registration order; expand the biggest while too few."""
    units: list[tuple[str, nn.Module]] = [(n, m) for n, m in model.named_children() if _has_params(m)]
    while True:
        expandable = [
            (sum(p.numel() for p in m.parameters()), i)
            for i, (_, m) in enumerate(units)
            if sum(1 for c in m.children() if _has_params(c)) >= 2
        ]
        if len(units) >= _MIN_FALLBACK_GROUPS or not expandable:
            break
        _, i = max(expandable)
        name, module = units[i]
        children = [(f"{name}.{n}" if name else n, c) for n, c in module.named_children() if _has_params(c)]
        units[i : i + 1] = children
    groups: list[list[str]] = []
    names: list[str] = []
    for name, module in units:
        groups.append([f"{name}.{p}" for p, _ in module.named_parameters()])
        names.append(name)
    # Parameters owned directly by the root (or by a child that was expanded) join the group before them in
    # the parameter order, or the first group.
    assigned = {p for g in groups for p in g}
    owner = {p: i for i, g in enumerate(groups) for p in g}
    current = 0
    for pname, _ in model.named_parameters():
        if pname in assigned:
            current = owner[pname]
        else:
            if not groups:
                groups.append([])
                names.append("model")
            groups[current].append(pname)
    return groups, names


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Ordered layer groups of a model, from input to output; the last one is "head".

    Args:
        model: a timm model (uses ``group_matcher(coarse=True)``) or any ``nn.Module`` (top-level children).

    Returns:
        Groups covering every parameter exactly once.

    Example:
        >>> [g.name for g in layer_groups(timm.create_model("resnet18"))]
        ['stem', 'layer1', 'layer2', 'layer3', 'layer4', 'head']
    """
    params = dict(model.named_parameters())
    if not params:
        raise ConfigError(f"{type(model).__name__} has no parameters to group")
    grouped = _timm_groups(model)
    if grouped is not None:
        names: list[str] = []
        stem = [re.compile(p) for p in _stem_patterns(model.group_matcher(coarse=True))]  # type: ignore[operator]
        get_classifier = getattr(model, "get_classifier", None)
        classifier = get_classifier() if callable(get_classifier) else None
        head_ids = {id(p) for p in classifier.parameters()} if isinstance(classifier, nn.Module) else set()
        for i, group in enumerate(grouped):
            if i == len(grouped) - 1 and len(grouped) > 1 and any(id(params[p]) in head_ids for p in group):
                names.append("head")
            elif i == 0 and stem and all(any(r.match(p) for r in stem) for p in group):
                names.append("stem")
            else:
                others = (p for j, g in enumerate(grouped) if j != i for p in g)
                names.append(_group_name(group, others, i))
    else:
        grouped, names = _fallback_groups(model)
        if len(grouped) > 1:
            names[-1] = "head"
        logger.info(
            "%s has no timm group_matcher: using its top-level children as %d layer groups (%s)",
            type(model).__name__,
            len(grouped),
            ", ".join(names),
        )
    names = _unique(names)
    return [
        LayerGroup(name=n, param_names=tuple(g), num_params=sum(params[p].numel() for p in g))
        for n, g in zip(names, grouped, strict=True)
    ]


def module_groups(model: nn.Module, groups: Sequence[LayerGroup]) -> dict[str, int]:
    """Group index of every module that directly owns parameters or buffers.

    Buffer-only modules (e.g. BatchNorm without affine parameters) join the group of the parameters nearest to
    them in the module tree (their own descendants first, then their parent's), so BatchNorm statistics follow
    the group they normalize.

    Args:
        model: the model the groups were computed for.
        groups: ``layer_groups(model)``.

    Returns:
        Module name ("" for the root) -> index into ``groups``.
    """
    param_group = {p: i for i, g in enumerate(groups) for p in g.param_names}
    out: dict[str, int] = {}
    pending: list[str] = []
    order: list[str] = []
    for mname, module in model.named_modules():
        own_params = [n for n, _ in module.named_parameters(recurse=False)]
        own_buffers = [n for n, _ in module.named_buffers(recurse=False)]
        if not own_params and not own_buffers:
            continue
        order.append(mname)
        if own_params:
            full = f"{mname}.{own_params[0]}" if mname else own_params[0]
            if full not in param_group:
                raise ConfigError(f"parameter {full} is in no layer group; recompute layer_groups for this model")
            out[mname] = param_group[full]
        else:
            pending.append(mname)
    names_in_order = list(param_group)
    for mname in pending:
        parts = mname.split(".") if mname else []
        found = None
        for depth in range(len(parts), 0, -1):
            prefix = ".".join(parts[:depth]) + "."
            found = next((param_group[p] for p in names_in_order if p.startswith(prefix)), None)
            if found is not None:
                break
        if found is None:
            # Nothing shares a module prefix: take the nearest preceding module that owns parameters.
            idx = order.index(mname)
            before = [out[m] for m in order[:idx] if m in out]
            found = before[-1] if before else 0
        out[mname] = found
    return out


def select_groups(groups: Sequence[LayerGroup], spec: str | Sequence[str]) -> list[int]:
    """Indices of the groups named by ``spec``, sorted and without duplicates.

    Args:
        groups: the model's layer groups.
        spec: group names, indices (negative counts from the head: -1 is "head"), or ``"re:<regex>"`` (searched in
            the names). A string holds one item or several separated by commas (a ``re:`` string is one regex).

    Returns:
        Sorted group indices.

    Raises:
        ConfigError: an unknown name (with a "did you mean"), an index out of range, a bad or unmatched regex.
    """
    names = [g.name for g in groups]
    if isinstance(spec, str):
        items = [spec.strip()] if spec.strip().startswith("re:") else [s.strip() for s in spec.split(",")]
    else:
        items = [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if not items:
        raise ConfigError(f"no layer groups selected; choose among: {', '.join(names)}")
    chosen: set[int] = set()
    problems: list[str] = []
    for item in items:
        if item.startswith("re:"):
            try:
                pattern = re.compile(item[3:])
            except re.error as e:
                problems.append(f"bad regular expression {item!r}: {e}")
                continue
            hits = [i for i, n in enumerate(names) if pattern.search(n)]
            if not hits:
                problems.append(f"{item!r} matches no layer group")
            chosen.update(hits)
        elif item in names:
            chosen.add(names.index(item))
        elif re.fullmatch(r"-?\d+", item):
            index = int(item)
            if not -len(names) <= index < len(names):
                problems.append(f"layer group index {index} is out of range (0..{len(names) - 1}, or -1 for the head)")
            else:
                chosen.add(index % len(names))
        else:
            problems.append(f"unknown layer group {item!r}{did_you_mean(item, names)}")
    if problems:
        raise ConfigError("; ".join(problems) + f"; layer groups are: {', '.join(names)}")
    return sorted(chosen)


def format_groups(groups: Sequence[LayerGroup]) -> str:
    """A plain-text table: index, name, parameters, % of total, cumulative % counted from the head."""
    total = sum(g.num_params for g in groups) or 1
    from_head = 0
    cumulative = []
    for g in reversed(groups):
        from_head += g.num_params
        cumulative.append(from_head)
    cumulative.reverse()
    rows: list[list[str]] = [
        [str(i), g.name, count(g.num_params), pct(g.num_params / total), pct(cum / total)]
        for i, (g, cum) in enumerate(zip(groups, cumulative, strict=True))
    ]
    rows.append(["", "total", count(total if groups else 0)])
    return table(["idx", "name", "params", "%", "cum% from head"], rows, align="rlrrr")
