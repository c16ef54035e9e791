// Workflows saved before the settings moved to the `SDiT Options` / `RAS Options` nodes store every
// setting as a widget value of the sampler or patch node. The sampler's own widgets (KSampler's plus
// sample_ratio) keep their positions, so the values left over are, in order, the Options node's
// widgets: on load they go to a new Options node plugged into the sampler, and a toast says so.
// How many values are the node's own is counted from its definition (a widget per widget input, plus
// the seed's control_after_generate), not from node.widgets: frontends differ in which widgets they
// create (Nodes 2.0 draws the seed control as a button; the pack adds a display-only widget).
import { app } from "../../scripts/app.js";

const OPTIONS_OF = {
  SDiTSampler: "SDiTOptions", SDiTModelPatch: "SDiTOptions",
  RASSampler: "RASOptions", RASModelPatch: "RASOptions",
};

const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);

function savedValueCount(nodeData) {
  let count = 0;
  for (const section of ["required", "optional"]) {
    for (const spec of Object.values(nodeData?.input?.[section] ?? {})) {
      const [type, options] = Array.isArray(spec) ? spec : [];
      if (options?.forceInput || !(Array.isArray(type) || WIDGET_TYPES.has(type))) continue;
      count += options?.control_after_generate ? 2 : 1;
    }
  }
  return count;
}

function moveLegacyValues(node) {
  const values = node.sditLegacyOptions;
  delete node.sditLegacyOptions;
  const slot = node.findInputSlot?.("options") ?? -1;
  if (slot < 0 || node.inputs[slot].link != null) return false;
  const options = globalThis.LiteGraph?.createNode?.(OPTIONS_OF[node.type]);
  if (!options) return false;
  values.forEach((value, i) => {
    const widget = options.widgets?.[i];
    if (widget && value !== null && value !== undefined) widget.value = value;
  });
  options.pos = [node.pos[0] - options.size[0] - 40, node.pos[1]];
  node.graph.add(options);
  options.connect(0, node, slot);
  return true;
}

app.registerExtension({
  name: "comfyui-sdit.options-migration",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!(nodeData?.name in OPTIONS_OF)) return;
    const own = savedValueCount(nodeData);
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (info) {
      const result = onConfigure?.apply(this, arguments);
      const saved = info?.widgets_values;
      if (Array.isArray(saved) && saved.length > own) this.sditLegacyOptions = saved.slice(own);
      return result;
    };
  },
  async afterConfigureGraph() {
    const nodes = app.graph?.nodes ?? app.graph?._nodes ?? [];
    const moved = nodes.filter((n) => n.sditLegacyOptions).filter((n) => {
      try {
        return moveLegacyValues(n);
      } catch {
        return false;   // a node we cannot migrate keeps the defaults; never break loading
      }
    });
    if (moved.length) {
      app.extensionManager?.toast?.add?.({
        severity: "info", life: 8000, summary: "SDiT / RAS settings moved",
        detail: `This workflow was saved before the settings moved to Options nodes: ${moved.length} ` +
                "Options node(s) were added with its values.",
      });
    }
  },
});
