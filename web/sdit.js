// ComfyUI frontend extension of the SDiT/RAS pack.
// - one colour for every node of the pack, so its nodes read as a group in the graph;
// - while a region-adaptive run samples, the backend sends `sdit.live` (step, tokens, a small map of
//   how often each token was computed, latest active tokens tinted): drawn at the bottom of the node;
// - when it ends, `sdit.summary` (token work vs dense, dense/sparse steps, wall time): a line of text.
// Messages are validated field by field; anything missing or malformed is ignored. Text is drawn on
// the canvas and the map is only ever a PNG data URL, so nothing from a message becomes HTML.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PACK_CATEGORY = "sampling/region adaptive";
const NODE_COLOR = "#3a3320";
const NODE_BGCOLOR = "#4d4326";
const MAP_SIZE = 96;
const LINE_HEIGHT = 16;
const PNG_PREFIX = "data:image/png;base64,";

const isCount = (v) => Number.isInteger(v) && v >= 0;
const isNumber = (v) => typeof v === "number" && Number.isFinite(v);
const isMethod = (v) => v === "RAS" || v === "SDiT";

function findNode(id) {
  if (typeof id !== "string" && typeof id !== "number") return null;
  const graph = app.graph;
  if (!graph?.getNodeById) return null;
  return graph.getNodeById(id) ?? graph.getNodeById(Number(id)) ?? null;
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

// Grow the node so the map and text fit under its widgets.
function makeRoom(node) {
  const extra = (node.sditLive ? MAP_SIZE + 8 : 0) + (node.sditSummary?.note ? 3 : 2) * LINE_HEIGHT + 8;
  const base = node.computeSize?.()[1] ?? node.size[1];
  if (node.size[1] < base + extra) node.setSize?.([node.size[0], base + extra]);
  app.graph?.setDirtyCanvas?.(true, true);
}

function onLive(event) {
  const live = parseLive(event?.detail);
  const node = live && findNode(event.detail.node);
  if (!node) return;
  const image = new Image();
  image.onload = () => app.graph?.setDirtyCanvas?.(true, false);
  image.src = live.map;
  node.sditLive = { ...live, image, text: liveText(live) };
  makeRoom(node);
}

function onSummary(event) {
  const summary = parseSummary(event?.detail);
  const node = summary && findNode(event.detail.node);
  if (!node) return;
  node.sditSummary = { ...summary, text: summaryText(summary) };
  makeRoom(node);
}

function drawRegionInfo(node, ctx) {
  const lines = [node.sditLive?.text, node.sditSummary?.text, node.sditSummary?.note].filter(Boolean);
  if (!lines.length) return;
  let y = node.size[1] - lines.length * LINE_HEIGHT - 4;
  const image = node.sditLive?.image;
  if (image?.complete && image.naturalWidth > 0) {
    const scale = MAP_SIZE / Math.max(image.naturalWidth, image.naturalHeight);
    const w = image.naturalWidth * scale, h = image.naturalHeight * scale;
    ctx.save();
    ctx.imageSmoothingEnabled = false;   // tokens stay crisp squares
    ctx.drawImage(image, (node.size[0] - w) / 2, y - h - 6, w, h);
    ctx.restore();
  }
  ctx.save();
  ctx.font = "12px sans-serif";
  ctx.fillStyle = "#ddd";
  ctx.textAlign = "left";
  for (const line of lines) {
    y += LINE_HEIGHT;
    ctx.fillText(line, 8, y - 4, node.size[0] - 16);
  }
  ctx.restore();
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
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color ??= NODE_COLOR;
      this.bgcolor ??= NODE_BGCOLOR;
      return result;
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      if (!this.flags?.collapsed) guarded(drawRegionInfo)(this, ctx);
      return result;
    };
  },
});
