// ComfyUI frontend extension of the SDiT/RAS pack: one colour for every node of the pack, so its nodes
// read as a group in the graph. (Live region maps and run summaries come from the backend; see issue 7.)
import { app } from "../../scripts/app.js";

const PACK_CATEGORY = "sampling/region adaptive";
const NODE_COLOR = "#3a3320";
const NODE_BGCOLOR = "#4d4326";

app.registerExtension({
  name: "comfyui-sdit.appearance",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.category?.startsWith(PACK_CATEGORY)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color ??= NODE_COLOR;
      this.bgcolor ??= NODE_BGCOLOR;
      return result;
    };
  },
});
