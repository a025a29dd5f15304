"""Write UI-format ComfyUI workflows (what the frontend saves, loads by drag-and-drop and lists as templates).

    wf = Workflow(info="What this workflow shows.")
    ckpt = wf.node("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    text = wf.node("CLIPTextEncode", text="a photo", clip=ckpt.out("CLIP"))
    ...
    wf.save("example_workflows/example.json")

``node(kind, **values)``: a keyword whose value is an output (``other.out(name or index)``) is a link;
any other keyword is a widget value. Widgets left out take their default; a file-list combo has none
and must be given. Values are checked against the node's schema (choices, min/max, type) when given.
``link(...)`` connects an output to an input after the fact; linking a widget input "converts" it to
an input as the frontend does (its value stays in ``widgets_values``).

Schemas (linkable inputs, widgets in frontend order, outputs) come from ``schema_for(kind)``: the old
extension's interface table (tests/data/ipadapter_plus_interface.json) for its node keys, so the files
do not depend on which of our nodes exist yet; ComfyUI's own nodes from the pinned table of
``harness.core_nodes`` (so the files are the same whichever ComfyUI version writes them).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from harness import REPO_ROOT, core_nodes

INTERFACE = REPO_ROOT / "tests" / "data" / "ipadapter_plus_interface.json"
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN")
# The value the frontend stores after a widget that has a companion widget.
COMPANION_VALUES = {"control_after_generate": "fixed", "image_upload": "image"}
NODE_WIDTH = 320
COLUMN_GAP = 60
ROW_GAP = 40


@dataclass(frozen=True)
class Widget:
    name: str
    kind: str  # INT, FLOAT, STRING, BOOLEAN or COMBO
    options: dict = field(default_factory=dict)  # default, min, max, step ...
    choices: tuple = ()  # COMBO only; empty for a folder's file list (any name is accepted)
    companion: str | None = None  # value stored after this one (seed control, image upload)

    def default(self):
        if "default" in self.options:
            return self.options["default"]
        if self.kind == "COMBO" and self.choices:
            return self.choices[0]
        raise ValueError(f"widget {self.name!r} has no default: give it a value")

    def check(self, value) -> None:
        if self.kind == "COMBO":
            if self.choices and value not in self.choices:
                raise ValueError(f"{self.name}={value!r} is not one of {list(self.choices)}")
            return
        expected = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}[self.kind]
        if isinstance(value, bool) and self.kind != "BOOLEAN" or not isinstance(value, expected):
            raise ValueError(f"{self.name}={value!r} is not a {self.kind}")
        low, high = self.options.get("min"), self.options.get("max")
        if low is not None and value < low or high is not None and value > high:
            raise ValueError(f"{self.name}={value!r} is outside [{low}, {high}]")


@dataclass(frozen=True)
class NodeSchema:
    inputs: tuple[tuple[str, str], ...]  # linkable (non-widget) inputs: (name, type), required then optional
    widgets: tuple[Widget, ...]  # widget inputs in the frontend's order
    outputs: tuple[tuple[str, str], ...]  # (name, type)

    def widget(self, name: str) -> Widget | None:
        return next((w for w in self.widgets if w.name == name), None)

    @classmethod
    def from_interface(cls, entry: dict) -> "NodeSchema":
        """From one node of the interface table (inputs in order with type, or choices)."""
        inputs, widgets = [], []
        for section in ("required", "optional"):
            for name, spec in entry.get(section, []):
                opts = {k: v for k, v in spec.items() if k not in ("type", "choices")}
                if "choices" in spec:
                    widgets.append(Widget(name, "COMBO", opts, tuple(spec["choices"]), _companion(opts)))
                elif spec["type"] in WIDGET_KINDS and not opts.get("forceInput"):
                    widgets.append(Widget(name, spec["type"], opts, (), _companion(opts)))
                else:
                    inputs.append((name, spec["type"]))
        returns = entry["return_types"]
        names = entry["return_names"] or returns
        return cls(tuple(inputs), tuple(widgets), tuple(zip(names, returns)))


def _companion(opts: dict) -> str | None:
    return next((value for flag, value in COMPANION_VALUES.items() if opts.get(flag)), None)


@lru_cache(maxsize=1)
def interface_nodes() -> dict:
    return json.loads(INTERFACE.read_text())["nodes"]


def _pack_nodes() -> dict:
    """This pack's node classes when ComfyUI has loaded it (harness.runtime.load_this_pack), else {}."""
    import sys

    from harness.runtime import PACK_NAME

    pack = sys.modules.get(PACK_NAME)
    return getattr(pack, "NODE_CLASS_MAPPINGS", {}) if pack is not None else {}


def _with_new_inputs(old: NodeSchema, ours: NodeSchema) -> NodeSchema:
    """The old extension's schema, followed by the inputs and widgets our node added after them (new
    inputs come last and are optional), so a saved file holds every widget value the frontend writes."""
    inputs = old.inputs + tuple(i for i in ours.inputs if i[0] not in dict(old.inputs))
    widgets = old.widgets + tuple(w for w in ours.widgets if old.widget(w.name) is None)
    return NodeSchema(inputs, widgets, old.outputs)


def schema_for(kind: str) -> NodeSchema:
    """The old extension's interface for its node keys (plus what our node added, when the pack is
    loaded), the pinned table for ComfyUI's own nodes (the same file whichever ComfyUI runs), else the
    running ComfyUI's registered class (needs it booted)."""
    if kind in interface_nodes():
        old = NodeSchema.from_interface(interface_nodes()[kind])
        ours = _pack_nodes().get(kind)
        if ours is None:
            return old
        return _with_new_inputs(old, NodeSchema.from_interface(core_nodes.interface_entry(ours)))
    if kind in core_nodes.pinned():
        return NodeSchema.from_interface(core_nodes.pinned()[kind])
    import nodes  # ComfyUI's registry

    if kind not in nodes.NODE_CLASS_MAPPINGS:
        raise KeyError(f"unknown node type {kind!r}")
    return NodeSchema.from_interface(core_nodes.interface_entry(nodes.NODE_CLASS_MAPPINGS[kind]))


@dataclass(frozen=True)
class Output:
    node: "Node"
    slot: int


class Node:
    def __init__(self, node_id: int, kind: str, schema: NodeSchema, values: dict, pos, title):
        self.id, self.kind, self.schema, self.pos, self.title = node_id, kind, schema, pos, title
        self.values = values  # widget name -> value
        self.links_in: dict[str, int] = {}  # input name -> link id
        self.converted: list[str] = []  # widget inputs turned into linked inputs, in link order
        self.links_out: dict[int, list[int]] = {}  # output slot -> link ids

    def out(self, which: str | int = 0) -> Output:
        """An output by name (RETURN_NAMES, else the type) or slot index."""
        if isinstance(which, int):
            if not 0 <= which < len(self.schema.outputs):
                raise IndexError(f"{self.kind} has {len(self.schema.outputs)} outputs, not slot {which}")
            return Output(self, which)
        names = [name for name, _ in self.schema.outputs]
        if which not in names:
            raise KeyError(f"{self.kind} has no output {which!r}; it has {names}")
        return Output(self, names.index(which))

    def input_slots(self) -> list[tuple[str, str, bool]]:
        """(name, type, is a converted widget) in the order the frontend lists them."""
        slots = [(name, kind, False) for name, kind in self.schema.inputs]
        for name in self.converted:
            widget = self.schema.widget(name)
            slots.append((name, widget.kind, True))
        return slots

    def widgets_values(self) -> list:
        values = []
        for widget in self.schema.widgets:
            values.append(self.values[widget.name] if widget.name in self.values else widget.default())
            if widget.companion is not None:
                values.append(widget.companion)
        return values


def _input_type(source: Output, kind: str, schema: NodeSchema, input_name: str) -> str:
    """The type of input ``input_name`` of a ``kind`` node, checked against what ``source`` gives."""
    inputs = dict(schema.inputs)
    if input_name in inputs:
        input_type = inputs[input_name]
    elif schema.widget(input_name) is not None:
        input_type = schema.widget(input_name).kind
    else:
        raise KeyError(f"{kind} has no input {input_name!r}")
    origin_type = source.node.schema.outputs[source.slot][1]
    if origin_type != input_type and "*" not in (origin_type, input_type):
        raise TypeError(f"{source.node.kind} output {origin_type} cannot feed {kind}.{input_name} ({input_type})")
    return input_type


class Workflow:
    """A UI-format workflow under construction; ``to_json()`` gives the file's content."""

    def __init__(self, info: str, schemas=schema_for):
        self.info = info
        self.schemas = schemas
        self.nodes: list[Node] = []
        self.links: list[list] = []  # [id, origin id, origin slot, target id, target slot, type]

    def node(self, kind: str, *, pos: tuple[int, int] | None = None, title: str | None = None, **values) -> Node:
        schema = self.schemas(kind)
        linked = {name: v for name, v in values.items() if isinstance(v, Output)}
        widgets = {name: v for name, v in values.items() if not isinstance(v, Output)}
        for name, value in widgets.items():
            widget = schema.widget(name)
            if widget is None:
                raise KeyError(f"{kind} has no widget {name!r}; widgets: {[w.name for w in schema.widgets]}")
            widget.check(value)
        for widget in schema.widgets:
            if widget.name not in values:
                widget.default()  # raises for a widget that must be given (a file name)
        for name, source in linked.items():  # checked before the node is added, so a refused call adds nothing
            _input_type(source, kind, schema, name)
        node = Node(len(self.nodes) + 1, kind, schema, widgets, pos, title)
        self.nodes.append(node)
        for name, source in linked.items():
            self.link(source, node, name)
        return node

    def link(self, source: Output, target: Node, input_name: str) -> int:
        _input_type(source, target.kind, target.schema, input_name)
        if input_name in target.links_in:
            raise ValueError(f"{target.kind}.{input_name} is already linked")
        if input_name not in dict(target.schema.inputs):
            target.converted.append(input_name)  # a widget turned into an input
        origin_type = source.node.schema.outputs[source.slot][1]
        link_id = len(self.links) + 1
        slot = [name for name, _, _ in target.input_slots()].index(input_name)
        self.links.append([link_id, source.node.id, source.slot, target.id, slot, origin_type])
        target.links_in[input_name] = link_id
        source.node.links_out.setdefault(source.slot, []).append(link_id)
        return link_id

    def _execution_order(self) -> list[Node]:
        """Nodes in a topological order (sources first), ties by id: the frontend's ``order`` field."""
        by_id = {n.id: n for n in self.nodes}
        parents = {n.id: {self.links[i - 1][1] for i in n.links_in.values()} for n in self.nodes}
        done: list[Node] = []
        placed: set[int] = set()
        while len(done) < len(self.nodes):
            ready = [i for i in sorted(by_id) if i not in placed and parents[i] <= placed]
            if not ready:
                raise ValueError("the workflow has a cycle")
            placed.add(ready[0])
            done.append(by_id[ready[0]])
        return done

    def _layout(self) -> dict[int, tuple[list[int], list[int]]]:
        """Position and size per node: a column per distance from the sources, stacked top to bottom."""
        depth: dict[int, int] = {}
        for node in self._execution_order():
            depth[node.id] = 1 + max((depth[self.links[i - 1][1]] for i in node.links_in.values()), default=-1)
        placed, bottoms = {}, {}
        for node in self.nodes:
            rows = max(len(node.input_slots()), len(node.schema.outputs))
            size = [NODE_WIDTH, 46 + 22 * rows + 26 * len(node.widgets_values())]
            column = depth[node.id]
            y = bottoms.get(column, 40)
            pos = list(node.pos) if node.pos else [40 + column * (NODE_WIDTH + COLUMN_GAP), y]
            bottoms[column] = y + size[1] + ROW_GAP
            placed[node.id] = (pos, size)
        return placed

    def to_json(self) -> dict:
        order = {n.id: i for i, n in enumerate(self._execution_order())}
        layout = self._layout()
        nodes = []
        for node in self.nodes:
            pos, size = layout[node.id]
            entry = {"id": node.id, "type": node.kind}
            if node.title:
                entry["title"] = node.title
            entry.update({
                "pos": pos, "size": size, "flags": {}, "order": order[node.id], "mode": 0,
                "inputs": [self._input_entry(node, name, kind, converted) for name, kind, converted in node.input_slots()],
                "outputs": [{"name": name, "type": kind, "links": node.links_out.get(slot, []), "slot_index": slot}
                            for slot, (name, kind) in enumerate(node.schema.outputs)],
                "properties": {"Node name for S&R": node.kind},
                "widgets_values": node.widgets_values(),
            })
            nodes.append(entry)
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": nodes,
            "links": [list(link) for link in self.links],
            "groups": [],
            "config": {},
            "extra": {"info": self.info},
            "version": 0.4,
        }

    @staticmethod
    def _input_entry(node: Node, name: str, kind: str, converted: bool) -> dict:
        entry = {"name": name, "type": kind, "link": node.links_in.get(name)}
        if converted:
            entry["widget"] = {"name": name}
        return entry

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1) + "\n"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.dumps())
        return path
