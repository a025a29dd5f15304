// IPAdapter Next: the layer weights editor.
//
// Gives the `layer_weights` text of IPAdapter Mad Scientist and IPAdapter Layer Weights an "edit layer weights"
// button that opens the UNet drawn as its blocks (input blocks down the left, the middle block at the bottom,
// output blocks up the right), one slider per transformer index; on SDXL each layer opens to one slider per
// transformer block. Presets are the weight types' own maps (web/layer_table.json, written from the Python
// library by dev/make_web_table.py). Every change writes the widget's text in exactly the format the node
// parses ("3:1, 6:0.5", "6.2:0.5" for one SDXL block), so workflows stay plain JSON and run without this file.
//
// Only the documented extension API is used: app.registerExtension, node.addWidget, the node's widgets.
import { app } from "../../scripts/app.js";

const NODES = new Set(["IPAdapterMS", "IPAdapterLayerWeights"]);
const WIDGET = "layer_weights";
const BUTTON = "edit layer weights";
const KEY = /^(?:(\d+)|(input|output)_(\d+)|(middle))(?:\.(\d+))?$/;
const STYLE = `
.ipa-lw-backdrop{position:fixed;inset:0;background:rgba(0,0,0,.55);z-index:10000;display:flex;align-items:center;
 justify-content:center;font:13px sans-serif;color:#ddd}
.ipa-lw-dialog{background:#24262c;border:1px solid #555;border-radius:8px;padding:14px;max-width:96vw;max-height:92vh;
 overflow:auto;box-shadow:0 8px 30px #000}
.ipa-lw-dialog h3{margin:0 0 8px;font-size:15px}
.ipa-lw-bar{display:flex;flex-wrap:wrap;gap:4px;margin:6px 0;align-items:center}
.ipa-lw-bar button,.ipa-lw-arch button{background:#3a3d46;color:#eee;border:1px solid #666;border-radius:4px;
 padding:2px 7px;cursor:pointer;font-size:12px}
.ipa-lw-arch button.on{background:#2e5aa0}
.ipa-lw-unet{display:grid;grid-template-columns:1fr 1fr 1fr;gap:10px;margin-top:8px}
.ipa-lw-col{display:flex;flex-direction:column;gap:5px}
.ipa-lw-col.middle{justify-content:flex-end}
.ipa-lw-block{background:#31343c;border:1px solid #4a4e59;border-radius:5px;padding:5px 7px}
.ipa-lw-block.input{border-left:4px solid #4d8f5a}.ipa-lw-block.middle{border-left:4px solid #a08a3a}
.ipa-lw-block.output{border-left:4px solid #3a6fa0}
.ipa-lw-row{display:flex;align-items:center;gap:6px}
.ipa-lw-row label{min-width:86px;font-size:12px}
.ipa-lw-row input[type=range]{width:130px}
.ipa-lw-row input[type=number]{width:58px;background:#1c1d22;color:#eee;border:1px solid #555}
.ipa-lw-sub{margin-left:14px}
.ipa-lw-text{width:100%;margin-top:8px;background:#1c1d22;color:#9fd;border:1px solid #555;font:12px monospace;
 padding:4px;box-sizing:border-box}
.ipa-lw-note{color:#e9b35f;font-size:12px;min-height:1em}`;

let tablePromise = null;
function layerTable() {
  tablePromise ??= fetch(new URL("./layer_table.json", import.meta.url)).then((r) => r.json());
  return tablePromise;
}

const number = (v) => String(Number(v.toFixed(4)));

// The text -> {index: [value per transformer block]}; throws Error naming the entry it cannot read.
export function parseLayerWeights(text, arch) {
  const byName = Object.fromEntries(arch.layers.map((l) => [l.name, l]));
  const byIndex = Object.fromEntries(arch.layers.map((l) => [String(l.index), l]));
  const whole = {};
  const sub = {};
  for (const raw of text.split(/[,\n]/)) {
    const entry = raw.trim();
    if (!entry) continue;
    const colon = entry.indexOf(":"); // the key is before the first colon, as the node reads it
    const keyText = colon < 0 ? entry : entry.slice(0, colon).trim();
    const valueText = colon < 0 ? undefined : entry.slice(colon + 1).trim();
    const value = Number(valueText);
    const m = KEY.exec(keyText ?? "");
    if (valueText === undefined || valueText === "" || Number.isNaN(value) || !m) {
      throw new Error(`cannot read "${entry}"`);
    }
    const layer = m[1] !== undefined ? byIndex[m[1]] : byName[m[4] ? "middle" : `${m[2]}_${Number(m[3])}`];
    if (!layer) throw new Error(`"${keyText}" is not a layer of ${arch.label}`);
    if (m[5] !== undefined) {
      if (Number(m[5]) >= layer.blocks) throw new Error(`layer ${layer.index} has ${layer.blocks} block(s)`);
      (sub[layer.index] ??= {})[Number(m[5])] = value;
    } else {
      whole[layer.index] = value;
    }
  }
  const values = {};
  for (const l of arch.layers) {
    values[l.index] = Array.from({ length: l.blocks }, (_, j) => sub[l.index]?.[j] ?? whole[l.index] ?? 0);
  }
  return values;
}

// {index: [values]} -> the text: "t:v" when a layer's blocks agree, else "t.j:v" per block; zeros left out
// (layers not named get 0). All zero is written "0:0", since empty text means "use weight_type".
export function formatLayerWeights(values, arch) {
  const entries = [];
  for (const l of arch.layers) {
    const v = values[l.index];
    if (v.every((x) => x === v[0])) {
      if (v[0] !== 0) entries.push(`${l.index}:${number(v[0])}`);
    } else {
      v.forEach((x, j) => x !== 0 && entries.push(`${l.index}.${j}:${number(x)}`));
    }
  }
  return entries.length ? entries.join(", ") : "0:0";
}

// The architecture of the graph around `node` when a file or checkpoint name upstream says it, else null.
function upstreamNames(node, seen = new Set()) {
  if (!node || seen.has(node.id) || seen.size > 40) return [];
  seen.add(node.id);
  const names = (node.widgets ?? []).filter((w) => typeof w.value === "string").map((w) => w.value);
  for (let slot = 0; slot < (node.inputs?.length ?? 0); slot++) {
    if (node.inputs[slot].link != null) names.push(...upstreamNames(node.getInputNode(slot), seen));
  }
  return names;
}

function guessArch(node) {
  let around = [node];
  if (node.comfyClass === "IPAdapterLayerWeights") around = node.getOutputNodes?.(0) ?? [];
  const names = around.flatMap((n) => upstreamNames(n)).filter((s) => /safetensors|\.bin|\.ckpt|sdxl|sd15/i.test(s));
  if (names.some((s) => /sdxl|[_-]xl|xl[_-]/i.test(s))) return "sdxl";
  if (names.some((s) => /sd15|sd-?1[._]5|v1-5/i.test(s))) return "sd15";
  return null;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

function ensureStyle() {
  if (!document.getElementById("ipa-lw-style")) document.head.append(el("style", { id: "ipa-lw-style" }, STYLE));
}

async function openEditor(node) {
  const widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) return;
  const table = await layerTable();
  ensureStyle();
  let archName = guessArch(node) ?? node.properties?.ipadapter_arch ?? "sd15";
  let values;
  const open = new Set();
  const note = el("div", { class: "ipa-lw-note" });
  const textView = el("textarea", { class: "ipa-lw-text", rows: "2", readonly: "" });
  const unet = el("div", { class: "ipa-lw-unet" });
  const archBar = el("div", { class: "ipa-lw-arch ipa-lw-bar" }, "UNet: ");
  const presets = el("div", { class: "ipa-lw-bar" }, "Presets: ");

  const write = () => {
    const text = formatLayerWeights(values, table[archName]);
    widget.value = text;
    widget.callback?.(text, app.canvas, node);
    textView.value = text;
    note.textContent = "";
    node.setDirtyCanvas?.(true, true);
  };

  const load = (text) => {
    try {
      values = parseLayerWeights(text, table[archName]);
      note.textContent = text.trim() ? "" : "Empty text: the node uses its weight_type. Any change writes the layers.";
    } catch (err) {
      values = parseLayerWeights("", table[archName]);
      note.textContent = `The text is not ${table[archName].label} layer weights (${err.message}); a change replaces it.`;
    }
  };

  const slider = (label, get, set, key) => {
    const range = el("input", { type: "range", min: "-1", max: "3", step: "0.05", "data-key": key });
    const box = el("input", { type: "number", step: "0.05", "data-key": key });
    range.value = box.value = number(get());
    const apply = (v) => {
      if (Number.isNaN(v)) return;
      set(v);
      range.value = box.value = number(v);
      write();
      draw();
    };
    range.addEventListener("input", () => apply(Number(range.value)));
    box.addEventListener("change", () => apply(Number(box.value)));
    return el("div", { class: "ipa-lw-row" }, el("label", {}, label), range, box);
  };

  const block = (layer) => {
    const v = values[layer.index];
    const mixed = !v.every((x) => x === v[0]);
    const card = el("div", { class: `ipa-lw-block ${layer.section}`, "data-layer": String(layer.index) });
    card.append(slider(`${layer.name} (${layer.index})${mixed ? " *" : ""}`, () => v[0], (x) => v.fill(x),
      String(layer.index)));
    if (layer.blocks > 1) {
      const shown = open.has(layer.index);
      card.append(el("button", {
        class: "ipa-lw-expand", "data-layer": String(layer.index),
        onclick: () => { shown ? open.delete(layer.index) : open.add(layer.index); draw(); },
      }, `${shown ? "hide" : "show"} its ${layer.blocks} transformer blocks`));
      if (shown) {
        v.forEach((_, j) => card.append(el("div", { class: "ipa-lw-sub" },
          slider(`block ${j}`, () => v[j], (x) => { v[j] = x; }, `${layer.index}.${j}`))));
      }
    }
    return card;
  };

  const draw = () => {
    const arch = table[archName];
    archBar.replaceChildren("UNet: ", ...Object.entries(table).map(([name, a]) => el("button", {
      class: name === archName ? "on" : "", "data-arch": name,
      onclick: () => { archName = name; node.properties ??= {}; node.properties.ipadapter_arch = name;
        load(widget.value ?? ""); draw(); },
    }, a.label)));
    presets.replaceChildren("Presets: ", ...Object.entries(arch.presets).map(([name, map]) => el("button", {
      "data-preset": name,
      onclick: () => { for (const l of arch.layers) values[l.index].fill(map[String(l.index)] ?? 0); write(); draw(); },
    }, name)));
    const sections = ["input", "middle", "output"].map((s) => arch.layers.filter((l) => l.section === s));
    sections[2] = [...sections[2]].reverse(); // output blocks climb back up the right side of the U
    unet.replaceChildren(...sections.map((layers, i) => el("div", { class: `ipa-lw-col ${["input", "middle", "output"][i]}` },
      el("b", {}, ["input blocks", "middle block", "output blocks"][i]), ...layers.map(block))));
    textView.value = widget.value ?? "";
  };

  load(widget.value ?? "");
  const close = () => backdrop.remove();
  const dialog = el("div", { class: "ipa-lw-dialog", role: "dialog" },
    el("h3", {}, `Layer weights: ${node.title ?? node.comfyClass}`),
    archBar, presets,
    el("div", { class: "ipa-lw-bar" },
      el("button", { class: "ipa-lw-reset", onclick: () => { load(""); for (const v of Object.values(values)) v.fill(1);
        write(); draw(); } }, "reset (all 1)"),
      el("button", { class: "ipa-lw-empty", onclick: () => { widget.value = ""; widget.callback?.("", app.canvas, node);
        load(""); draw(); } }, "empty (use weight_type)"),
      el("button", { class: "ipa-lw-close", onclick: close }, "close")),
    note, unet, textView);
  const backdrop = el("div", { class: "ipa-lw-backdrop", onclick: (e) => e.target === backdrop && close() }, dialog);
  document.body.append(backdrop);
  draw();
}

app.registerExtension({
  name: "ipadapter_next.LayerWeightsEditor",
  async nodeCreated(node) {
    if (!NODES.has(node.comfyClass) || !node.widgets?.some((w) => w.name === WIDGET)) return;
    const button = node.addWidget("button", BUTTON, null, () => openEditor(node));
    button.serialize = false; // not a value: saved workflows keep exactly the node's own widgets
    button.options = { ...(button.options ?? {}), serialize: false };
  },
});
