// ComfyUI frontend extension of the SDiT/RAS pack.
// - one colour for every node of the pack, so its nodes read as a group in the graph;
// - while a region-adaptive run samples, the backend sends `sdit.live` (step, tokens, a small map of
//   how often each token was computed, latest active tokens tinted); when it ends, `sdit.summary`
//   (token work vs dense, dense/sparse steps, wall time). Both are shown in a DOM widget on the node
//   that ran them, which the classic canvas and Nodes 2.0 (Vue nodes) both render; the node grows to
//   fit it, so nothing is drawn over its neighbours.
// Messages are validated field by field; anything missing or malformed is ignored. Text goes in with
// textContent and the map is only ever a PNG data URL, so nothing from a message becomes HTML.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PACK_CATEGORY = "sampling/region adaptive";
const LIVE_NODES = new Set(["RASSampler", "SDiTSampler", "RASModelPatch", "SDiTModelPatch"]);
const INFO_WIDGET = "sdit_region_info";
const NODE_COLOR = "#3a3320";
const NODE_BGCOLOR = "#4d4326";
const MAP_SIZE = 96;
const LINE_HEIGHT = 16;
const FONT = "12px sans-serif";
const PADDING = 8;
const PNG_PREFIX = "data:image/png;base64,";

const isCount = (v) => Number.isInteger(v) && v >= 0;
const isNumber = (v) => typeof v === "number" && Number.isFinite(v);
const isMethod = (v) => v === "RAS" || v === "SDiT";

// The backend names a node by its execution id: "7", or "3:7" for node 7 inside the subgraph of node 3.
function findNode(id) {
  if (typeof id !== "string" && typeof id !== "number") return null;
  let graph = app.graph;
  let node = null;
  for (const part of String(id).split(":")) {
    if (!graph?.getNodeById) return null;
    node = graph.getNodeById(part) ?? graph.getNodeById(Number(part)) ?? null;
    if (!node) return null;
    graph = node.subgraph;
  }
  return node;
}

function parseLive(d) {
  if (!d || typeof d !== "object" || !isMethod(d.method)) return null;
  if (![d.step, d.steps, d.tokens, d.total].every(isCount) || typeof d.dense !== "boolean") return null;
  if (typeof d.map !== "string" || !d.map.startsWith(PNG_PREFIX) || d.map.length > 2_000_000) return null;
  return { method: d.method, step: d.step, steps: d.steps, tokens: d.tokens, total: d.total, dense: d.dense, map: d.map };
}

function parseSummary(d) {
  if (!d || typeof d !== "object" || !isMethod(d.method)) return null;
  if (![d.dense, d.sparse, d.evaluations].every(isCount) || !isNumber(d.work_fraction) || !isNumber(d.seconds)) return null;
  const note = typeof d.note === "string" ? d.note.slice(0, 200) : "";
  return { method: d.method, work: d.work_fraction, dense: d.dense, sparse: d.sparse, seconds: d.seconds, note };
}

function liveText(live) {
  const kind = live.dense ? "dense" : "sparse";
  return `${live.method} step ${live.step + 1}/${live.steps}: ${live.tokens}/${live.total} tokens (${kind})`;
}

function summaryText(s) {
  const work = (100 * s.work).toFixed(0);
  return `${s.method}: ${work}% of dense token work, ${s.dense} dense + ${s.sparse} sparse, ${s.seconds.toFixed(1)} s`;
}

// ---- the info widget: map + lines, plain DOM ----------------------------------------------------

let measureContext = null;
function textRows(text, width) {   // how many wrapped rows a line takes at the widget's width
  measureContext ??= document.createElement("canvas").getContext("2d");
  if (!measureContext) return 1;
  measureContext.font = FONT;
  return Math.max(1, Math.ceil(measureContext.measureText(text).width / Math.max(40, width - 2 * PADDING)));
}

function infoLines(node) {
  return [node.sditLive?.text, node.sditSummary?.text, node.sditSummary?.note].filter(Boolean);
}

function infoHeight(node) {
  const lines = infoLines(node);
  if (!lines.length) return 0;
  const rows = lines.reduce((sum, line) => sum + textRows(line, node.size?.[0] ?? 300), 0);
  return PADDING + (node.sditLive ? MAP_SIZE + 4 : 0) + rows * LINE_HEIGHT + PADDING;
}

function createInfoWidget(node) {
  if (typeof node.addDOMWidget !== "function") return null;
  const root = document.createElement("div");
  root.className = "sdit-region-info";
  Object.assign(root.style, { display: "none", flexDirection: "column", alignItems: "stretch", gap: "0",
                              padding: `${PADDING}px`, boxSizing: "border-box", font: FONT, color: "#ddd",
                              lineHeight: `${LINE_HEIGHT}px`, overflow: "hidden", pointerEvents: "none" });
  const map = document.createElement("img");
  map.alt = "";
  Object.assign(map.style, { display: "none", height: `${MAP_SIZE}px`, maxWidth: "100%", objectFit: "contain",
                             imageRendering: "pixelated", alignSelf: "center", marginBottom: "4px" });
  const lines = [0, 1, 2].map(() => {
    const line = document.createElement("div");
    Object.assign(line.style, { whiteSpace: "normal", overflowWrap: "anywhere" });
    return line;
  });
  root.append(map, ...lines);
  const widget = node.addDOMWidget(INFO_WIDGET, "sdit-region-info", root, {
    serialize: false, hideOnZoom: false,
    getValue: () => undefined, setValue: () => {},
    getMinHeight: () => infoHeight(node), getMaxHeight: () => infoHeight(node) || 1,
  });
  widget.serialize = false;            // never part of the saved widget values or the prompt
  return { root, map, lines };
}

// Show the node's latest state in its widget and grow the node so the widget fits under the others.
function refresh(node) {
  const info = node.sditInfo;
  if (!info) return;
  const texts = infoLines(node);
  info.root.style.display = texts.length ? "flex" : "none";
  if (node.sditLive && info.map.getAttribute("src") !== node.sditLive.map) info.map.src = node.sditLive.map;
  info.map.style.display = node.sditLive ? "block" : "none";
  info.lines.forEach((line, i) => {
    line.textContent = texts[i] ?? "";
    line.style.display = texts[i] ? "block" : "none";
  });
  const needed = node.computeSize?.()[1];
  if (isNumber(needed) && node.size[1] < needed) node.setSize?.([node.size[0], needed]);
  app.graph?.setDirtyCanvas?.(true, true);
}

function onLive(event) {
  const live = parseLive(event?.detail);
  const node = live && findNode(event.detail.node);
  if (!node) return;
  node.sditLive = { ...live, text: liveText(live) };
  refresh(node);
}

function onSummary(event) {
  const summary = parseSummary(event?.detail);
  const node = summary && findNode(event.detail.node);
  if (!node) return;
  node.sditSummary = { ...summary, text: summaryText(summary) };
  refresh(node);
}

function guarded(handler) {
  return (...args) => {
    try {
      return handler(...args);
    } catch {
      return undefined;   // a broken message must never break the UI
    }
  };
}

app.registerExtension({
  name: "comfyui-sdit.region-maps",
  async setup() {
    api.addEventListener("sdit.live", guarded(onLive));
    api.addEventListener("sdit.summary", guarded(onSummary));
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.category?.startsWith(PACK_CATEGORY)) return;
    const showsRuns = LIVE_NODES.has(nodeData.name);
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color ??= NODE_COLOR;
      this.bgcolor ??= NODE_BGCOLOR;
      if (showsRuns) this.sditInfo = guarded(createInfoWidget)(this) ?? undefined;
      return result;
    };
  },
});
