"""What a hardware delegate (GPU, Edge TPU) really took: counted from the interpreter's graph, never
assumed from "the library loaded".

LiteRT keeps every node of the model in its node list; a delegate adds one DELEGATE node per
partition it takes (the nodes it replaced stay listed but leave the execution plan). The replaced
nodes are found by walking back from each DELEGATE node's outputs to its inputs. This must run
right after the interpreter is built: a user delegate is applied then, while LiteRT's default CPU
delegate (XNNPACK) adds DELEGATE nodes of its own at allocate_tensors(), which would count as GPU
work. LiteRT's Python API reads only the first subgraph (signature); a delegate is applied to every
subgraph alike. Counts that cannot be read are None with a reason, never a guess.
May import: stdlib, edgekit.core.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgekit.core.errors import EdgekitError

CPU_DELEGATES = ("none", "xnnpack")  # LiteRT's own CPU path: nothing to check
EDGETPU_OP = "edgetpu-custom-op"
EDGETPU_DOC = "docs/coral.md#runtime-on-raspberry-pi-os"  # the same section edgekit coral status points at


class DelegateUnusable(EdgekitError):
    """A requested hardware delegate is missing or takes no work (and CPU fallback was not allowed)."""


@dataclass
class Delegation:
    """One interpreter's (or, combined, one model's) delegation facts; see module docstring."""

    delegate: str = "none"  # what the target requested: none / xnnpack / gpu / edgetpu
    library: str = ""
    loaded: bool = False
    nodes_delegated: int | None = None
    nodes_cpu: int | None = None
    segments_delegated: int | None = None  # segmented models (coral tpu-segments): files the delegate took
    segments_total: int | None = None
    edgetpu_custom_ops: int | None = None  # edgetpu-custom-op nodes in the opened file(s) (Edge TPU only)
    cpu_fallback: bool = False  # the delegate is missing or useless and --allow-cpu-fallback let it run on CPU
    reason: str = ""

    @property
    def hardware(self) -> bool:
        return self.delegate not in CPU_DELEGATES

    @property
    def useless(self) -> bool:
        """A hardware delegate was requested and, as far as facts show, nothing runs on it."""
        if not self.hardware:
            return False
        if not self.loaded:
            return True
        if self.segments_total is not None and self.segments_delegated is not None:
            return self.segments_delegated == 0
        return self.nodes_delegated == 0

    @property
    def accelerator(self) -> str:
        if self.hardware and self.loaded and not self.useless:
            return f"{self.delegate} ({self.library})"
        return "cpu (xnnpack)"

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One startup line, e.g. 'delegate gpu: 0 of 412 nodes delegated (all on CPU)'."""
        if not self.hardware:
            return f"delegate {self.delegate}: none requested (CPU)"
        if not self.loaded:
            return f"delegate {self.delegate}: not loaded, {self.reason} (all on CPU)"
        nodes = ("? nodes delegated (" + self.reason + ")" if self.nodes_delegated is None else
                 f"{self.nodes_delegated} of {self.nodes_delegated + self.nodes_cpu} nodes delegated")
        if self.segments_total is not None:
            segs = "?" if self.segments_delegated is None else self.segments_delegated
            nodes = f"{segs} of {self.segments_total} segments, {nodes}"
        where = " (all on CPU)" if self.useless else ""
        return f"delegate {self.delegate}: {nodes}{where}"

    def refusal(self, target: str) -> str:
        return (f"target {target} requests the {self.delegate} delegate but {self._why()}; pass "
                f"--allow-cpu-fallback to run on the CPU anyway{self.hint()}")

    def hint(self) -> str:
        """Where to look when the Edge TPU runtime did not load ("" otherwise)."""
        if self.delegate != "edgetpu" or self.loaded:
            return ""
        return f" (check: edgekit coral status; install: {EDGETPU_DOC})"

    def _why(self) -> str:
        if not self.loaded:
            return f"it is not available here: {self.reason}"
        return f"it takes no work: {self.reason}"


def no_delegate(delegate: str = "none") -> Delegation:
    return Delegation(delegate=delegate, reason="no hardware delegate requested")


def not_loaded(delegate: str, library: str, why: str) -> Delegation:
    return Delegation(delegate=delegate, library=library, loaded=False, reason=why)


def count_nodes(interpreter) -> tuple[int, int] | str:
    """(nodes taken by delegates, nodes left to the CPU) in the interpreter's first subgraph, or the
    reason they cannot be read. Call before allocate_tensors() (see module docstring)."""
    graph = getattr(interpreter, "_interpreter", None)
    if graph is None or not all(hasattr(graph, a) for a in ("NumNodes", "NodeName", "NodeInputs", "NodeOutputs")):
        return "this LiteRT build does not expose the interpreter's nodes"
    n = graph.NumNodes()
    names = [graph.NodeName(i) for i in range(n)]
    producer = {int(t): i for i in range(n) if names[i] != "DELEGATE" for t in graph.NodeOutputs(i)}
    replaced: set[int] = set()
    for i in (i for i in range(n) if names[i] == "DELEGATE"):
        boundary = {int(t) for t in graph.NodeInputs(i)}
        todo, seen = [int(t) for t in graph.NodeOutputs(i)], set()
        while todo:
            t = todo.pop()
            if t in boundary or t in seen or t not in producer:
                continue
            seen.add(t)
            node = producer[t]
            if node not in replaced:
                replaced.add(node)
                todo.extend(int(x) for x in graph.NodeInputs(node) if x >= 0)
    original = n - names.count("DELEGATE")
    return len(replaced), original - len(replaced)


def measured(interpreter, delegate: str, library: str, custom_ops: int | None = None) -> Delegation:
    """The Delegation of an interpreter built with the delegate loaded (before allocate_tensors)."""
    counted = count_nodes(interpreter)
    d = Delegation(delegate=delegate, library=library, loaded=True, edgetpu_custom_ops=custom_ops)
    if isinstance(counted, str):
        d.reason = counted
        return d
    d.nodes_delegated, d.nodes_cpu = counted
    total = d.nodes_delegated + d.nodes_cpu
    if d.nodes_delegated == 0:
        d.reason = f"the delegate loaded but took none of the {total} nodes"
        if custom_ops == 0:
            d.reason += f" (the model has no {EDGETPU_OP}: it is not compiled for the Edge TPU)"
    else:
        d.reason = f"{d.nodes_delegated} of {total} nodes delegated"
    return d


def combine(parts: list[Delegation]) -> Delegation:
    """One model's Delegation from its segments' (segmented models: one interpreter per file)."""
    if not parts:
        return no_delegate()
    first = parts[0]
    d = Delegation(delegate=first.delegate, library=first.library, loaded=all(p.loaded for p in parts),
                   segments_total=len(parts))
    if not d.hardware:
        d.reason = first.reason
        return d
    if not d.loaded:
        d.reason = next(p.reason for p in parts if not p.loaded)
        return d
    if all(p.nodes_delegated is not None for p in parts):
        d.nodes_delegated = sum(p.nodes_delegated for p in parts)
        d.nodes_cpu = sum(p.nodes_cpu for p in parts)
        d.segments_delegated = sum(p.nodes_delegated > 0 for p in parts)
    if all(p.edgetpu_custom_ops is not None for p in parts):
        d.edgetpu_custom_ops = sum(p.edgetpu_custom_ops for p in parts)
    unread = next((p.reason for p in parts if p.nodes_delegated is None), None)
    if unread:
        d.reason = unread
    elif d.segments_delegated == 0:
        d.reason = _none_taken(d)
    else:
        d.reason = f"{d.segments_delegated} of {len(parts)} segments delegated"
    return d


def _none_taken(d: Delegation) -> str:
    total = d.nodes_delegated + d.nodes_cpu
    why = f"the delegate loaded but took none of the {total} nodes in {d.segments_total} segments"
    if d.edgetpu_custom_ops == 0:
        why += f" (no segment has an {EDGETPU_OP}: they are not compiled for the Edge TPU)"
    return why


def settle(d: Delegation | None, target: str, allow_cpu_fallback: bool) -> str | None:
    """Raise DelegateUnusable for a useless delegate unless `allow_cpu_fallback`; then mark the
    fallback and return the one warning line to show. None when there is nothing to say."""
    if d is None or not d.useless:
        return None
    if not allow_cpu_fallback:
        raise DelegateUnusable(d.refusal(target))
    d.cpu_fallback = True
    return f"WARNING: {d.line()}; continuing on the CPU (--allow-cpu-fallback){d.hint()}"
